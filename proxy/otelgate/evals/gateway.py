"""A real otelgate (the app `otelgate serve` runs) started for an eval run or a test, with one port per run.

Agents do nothing to help attribution: each run gets its own listening socket on the same app, and the base URL
handed to the agent points at it. A small middleware maps the socket a request arrived on to the run's Recording
and adds what the agent could not: the run's session id, a W3C ``traceparent`` so every call of the run lands in
one trace, and (against the simulator) the name of the run's script queue.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from otelgate.app import create_app, make_telemetry, runner_for
from otelgate.config import Settings
from otelgate.evals.recorder import RUN_KEY, Recorder, Recording

SIM_QUEUE_HEADER = "x-sim-script"  # otelgate.sim draws a request's step from this named queue


@dataclass
class RunSite:
    """Where one run's agent connects."""

    url: str  # Anthropic base URL (ANTHROPIC_BASE_URL)
    recording: Recording
    headers: dict[str, str] = field(default_factory=dict)  # added to each request unless the agent sent its own
    _site: web.SockSite | None = None

    @property
    def openai_url(self) -> str:
        """OpenAI base URL (OPENAI_BASE_URL): the SDK appends /chat/completions to it."""
        return self.url + "/v1"

    def env(self) -> dict[str, str]:
        return {"ANTHROPIC_BASE_URL": self.url, "OPENAI_BASE_URL": self.openai_url}


def with_upstream(settings: Settings, anthropic_url: str, openai_url: str) -> Settings:
    """The same settings with both upstreams pointing elsewhere (the simulator), everything else unchanged."""
    ups = settings.upstreams
    upstreams = ups.model_copy(
        update={
            "anthropic": ups.anthropic.model_copy(update={"base_url": anthropic_url.rstrip("/")}),
            "openai": ups.openai.model_copy(update={"base_url": openai_url.rstrip("/")}),
        }
    )
    return settings.model_copy(update={"upstreams": upstreams})


class EvalGateway:
    def __init__(self, settings: Settings, *, telemetry: Any = "default") -> None:
        self.settings = settings
        self._telemetry_arg = telemetry
        self.telemetry: Any = None
        self._runner: web.AppRunner | None = None
        self._runs: dict[int, RunSite] = {}

    async def start(self) -> EvalGateway:
        tel = make_telemetry(self.settings) if self._telemetry_arg == "default" else self._telemetry_arg
        self.telemetry = tel
        app = create_app(self.settings, telemetry=tel, extra_filters=[Recorder()])
        # Appended before the runner freezes the app: runs after routing, before the pipeline handler.
        app.middlewares.append(self._middleware)
        self._runner = runner_for(app, self.settings)
        await self._runner.setup()
        return self

    async def open(self, recording: Recording, headers: Mapping[str, str] | None = None) -> RunSite:
        """Listen on a new loopback port for one run."""
        assert self._runner is not None, "start() first"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        run = RunSite(f"http://127.0.0.1:{port}", recording, dict(headers or {}))
        site = web.SockSite(self._runner, sock)
        await site.start()
        run._site = site
        self._runs[port] = run
        return run

    async def close_run(self, run: RunSite) -> None:
        """Stop listening for a run (its calls have ended: the agent exited)."""
        port = int(run.url.rsplit(":", 1)[1])
        self._runs.pop(port, None)
        if run._site is not None:
            site, run._site = run._site, None
            await site.stop()

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._runs.clear()

    async def __aenter__(self) -> EvalGateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        run = self._runs.get(sockname[1]) if sockname else None
        if run is None:
            return await handler(request)
        missing = {name: value for name, value in run.headers.items() if name not in request.headers}
        if missing:
            headers = request.headers.copy()
            headers.update(missing)
            request = request.clone(headers=headers)
        request[RUN_KEY] = run.recording
        return await handler(request)
