"""pytest plugin: test an agent against a scripted LLM behind a real otelgate gateway.

Registered through the ``pytest11`` entry point, and opt-in: it only defines the ``otelgate_llm`` fixture. No
option, hook or import of the gateway happens until a test asks for the fixture.

    def test_agent_answers(otelgate_llm):
        llm = otelgate_llm(
            [{"tool_call": {"name": "get_weather", "input": {"city": "Paris"}}}, {"text": "Sunny in Paris."}],
            config={"defaults": {"limits": {"session": {"max_tokens": 5000}}}},
        )
        answer = my_agent.run("Weather in Paris?", base_url=llm.url)      # or env=llm.env for a subprocess
        assert llm.iterations == 2 and llm.tool_names == ["get_weather"]

The gateway (and the simulated upstream) run on a background thread with their own event loop, so sync agents and
async tests both work. Reading what the gateway saw waits for in-flight calls to finish first.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from otelgate.config import merge_into
from otelgate.totals import CallTotals

if TYPE_CHECKING:
    from otelgate.evals.gateway import EvalGateway, RunSite
    from otelgate.evals.recorder import CallRecord, ToolCallRecord, ToolResultRecord
    from otelgate.sim import SimRequest, SimUpstream

__all__ = ["LLMHarness", "ScriptedLLM", "otelgate_llm"]

_PLACEHOLDER_KEY = "sk-otelgate-test"


class ScriptedLLM(CallTotals):
    """One gateway (with the test's config) in front of one scripted queue of the simulated upstream."""

    def __init__(self, harness: LLMHarness, gateway: EvalGateway, site: RunSite, queue: str) -> None:
        self._harness = harness
        self._gateway = gateway
        self._site = site
        self._queue = queue
        self.settings = gateway.settings

    # --- what to give the agent -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Anthropic base URL (``anthropic.Anthropic(base_url=llm.url)``)."""
        return self._site.url

    @property
    def openai_url(self) -> str:
        """OpenAI base URL (``openai.OpenAI(base_url=llm.openai_url)``)."""
        return self._site.openai_url

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess agent: both base URLs and placeholder API keys."""
        return {**self._site.env(), "ANTHROPIC_API_KEY": _PLACEHOLDER_KEY, "OPENAI_API_KEY": _PLACEHOLDER_KEY}

    # --- the script -----------------------------------------------------------------------------------------
    def script(self, steps: Sequence[Any] | str) -> int:
        """Append steps (the otelgate.sim format, or YAML text) to this LLM's queue; raises ScriptError if bad."""
        return self._harness.sim.script(steps, name=self._queue)

    @property
    def remaining(self) -> int:
        """Scripted steps not consumed yet."""
        return self._harness.sim.remaining(self._queue)

    @property
    def requests(self) -> list[SimRequest]:
        """What reached the simulated upstream (after the gateway's policies): ``.json()`` is the body sent."""
        return self._harness.sim.requests_for(self._queue)

    # --- what the gateway saw -------------------------------------------------------------------------------
    @property
    def calls(self) -> list[CallRecord]:
        """Every request the agent made through the gateway, refused ones included, in order of completion."""
        return self._site.recording.settled()



    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        """Tools the model asked for, as the gateway saw them in its answers."""
        return [tool for call in self.calls for tool in call.tool_calls]

    @property
    def tool_names(self) -> list[str]:
        return [tool.name for tool in self.tool_calls]

    @property
    def tool_results(self) -> list[ToolResultRecord]:
        """Tool results the agent sent back (``is_error`` when the tool failed). A conversation resends earlier
        results on every turn, so a result appears once per request that carried it."""
        return [result for call in self.calls for result in call.tool_results]





    @property
    def refusals(self) -> list[CallRecord]:
        """Calls the gateway refused (budget, session limit, screening, auth, ...): see ``.rejected_reason``."""
        return [call for call in self.calls if call.refused]

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        """Screening verdicts of every call."""
        return [verdict for call in self.calls for verdict in call.verdicts]


class LLMHarness:
    """A background event loop running one simulated upstream and any number of gateways for a test."""

    def __init__(self, store_dir: str, labels: dict[str, str] | None = None) -> None:
        from otelgate.sim import SimUpstream

        self._store_dir = store_dir
        self._labels = dict(labels or {})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otelgate-testing", daemon=True)
        self._thread.start()
        self._gateways: list[EvalGateway] = []
        self._counter = itertools.count()
        self.sim: SimUpstream = SimUpstream(port=0)
        self._run(self.sim.start())

    def _run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def settings(self, config: dict[str, Any] | None) -> Any:
        quick_retry = {"base_delay": 0.01, "max_delay": 0.05}
        data: dict[str, Any] = {
            "upstreams": {
                "anthropic": {"base_url": self.sim.url, "retry": quick_retry},
                "openai": {"base_url": self.sim.openai_base_url, "retry": quick_retry},
            },
            "budgets": {"store": f"sqlite:///{self._store_dir}/otelgate-{next(self._counter)}.db"},
            "telemetry": {"log_requests": False},
        }
        merge_into(data, config or {})
        return _settings_class()(**data)

    def llm(
        self, script: Sequence[Any] | str | None = None, *, config: dict[str, Any] | None = None, telemetry: Any = None
    ) -> ScriptedLLM:
        from otelgate.evals.gateway import SIM_QUEUE_HEADER, EvalGateway
        from otelgate.evals.recorder import Recording

        settings = self.settings(config)
        queue = f"llm-{next(self._counter)}"
        if script is not None:
            self.sim.script(script, name=queue)  # validated first: a bad script fails before anything starts

        async def start() -> tuple[EvalGateway, RunSite]:
            gateway = await EvalGateway(settings, telemetry=telemetry).start()
            site = await gateway.open(Recording(queue, self._labels), {SIM_QUEUE_HEADER: queue})
            return gateway, site

        gateway, site = self._run(start())
        self._gateways.append(gateway)
        return ScriptedLLM(self, gateway, site, queue)

    def close(self) -> None:
        async def stop() -> None:
            for gateway in self._gateways:
                await gateway.close()
            await self.sim.stop()

        try:
            self._run(stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@functools.cache
def _settings_class() -> Any:
    from otelgate.config import Settings

    class TestSettings(Settings):
        # A test's gateway is what the test says: OTELGATE_* variables of the environment do not apply.
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: Any,
            init_settings: Any,
            env_settings: Any,
            dotenv_settings: Any,
            file_secret_settings: Any,
        ) -> tuple[Any, ...]:
            return (init_settings,)

    return TestSettings


@pytest.fixture
def otelgate_llm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A factory: ``otelgate_llm(steps=None, *, config=None, telemetry=None) -> ScriptedLLM``.

    ``steps`` script the simulated LLM (the otelgate.sim format: text, tool calls, error statuses, faults);
    ``config`` is merged into the gateway's settings (limits, budgets, screening, keys, ...); ``telemetry`` may be
    a ``otelgate.telemetry.Telemetry``. Each call starts its own gateway; all stop when the test ends.
    """
    harness = LLMHarness(str(tmp_path_factory.mktemp("otelgate")), {"otelgate.test": request.node.nodeid})
    try:
        yield harness.llm
    finally:
        harness.close()
