"""Run a real otelgate (the same app `otelgate serve` runs) on a free loopback port for tests.

    async with gateway({"upstreams": {...}}, sim) as gw:      # in an async test
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-test")

    with gateway_thread(settings, sim) as gw:                 # for sync SDK clients: own loop in a thread
        client = anthropic.Anthropic(base_url=gw.url, api_key="sk-test")
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from otelgate.app import PIPELINE_KEY, create_app, make_telemetry, runner_for
from otelgate.config import Settings, merge_into


def settings_for(config: dict[str, Any] | Settings | None = None, sim: Any = None, **overrides: Any) -> Settings:
    """Settings pointing both upstreams at the sim, with test-friendly defaults (small retry delays, a store in
    memory-backed temp file chosen by the caller)."""
    if isinstance(config, Settings):
        return config
    data: dict[str, Any] = {"server": {"port": 0}}
    if sim is not None:
        data["upstreams"] = {
            "anthropic": {"base_url": sim.url, "retry": {"base_delay": 0.01, "max_delay": 0.05}},
            "openai": {"base_url": sim.openai_base_url, "retry": {"base_delay": 0.01, "max_delay": 0.05}},
        }
    merge_into(data, config or {})
    merge_into(data, overrides)
    return Settings(**data)


@dataclass
class Gateway:
    url: str
    app: web.Application
    settings: Settings
    telemetry: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    @property
    def inflight(self) -> int:
        return self.app[PIPELINE_KEY].inflight


@contextlib.asynccontextmanager
async def gateway(
    config: dict[str, Any] | Settings | None = None,
    sim: Any = None,
    *,
    telemetry: Any = "default",
    extra_filters: Sequence[Any] = (),
    **kw: Any,
) -> AsyncIterator[Gateway]:
    settings = settings_for(config, sim)
    tel = make_telemetry(settings, **kw) if telemetry == "default" else telemetry
    app = create_app(settings, telemetry=tel, extra_filters=extra_filters)
    async with serving(runner_for(app, settings)) as url:
        yield Gateway(url, app, settings, tel)


@contextlib.asynccontextmanager
async def serving(runner: web.AppRunner) -> AsyncIterator[str]:
    """Serve an app runner (not yet set up) on a free loopback port; yields its base URL. Also for a test's own
    stand-in upstream: `async with serving(web.AppRunner(app)) as url`."""
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def gateway_thread(config: dict[str, Any] | Settings | None = None, sim: Any = None, **kw: Any) -> Iterator[Gateway]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with gateway(config, sim, **kw) as gw:
                holder["gw"] = gw
                started.set()
                await stop.wait()
        except BaseException as exc:  # surface startup failures to the test thread
            holder["error"] = exc
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("gateway did not start within 30 s")
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["gw"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


async def wait_until(predicate: Any, within: float = 10.0, interval: float = 0.01) -> bool:
    """Poll a condition until it holds or the deadline passes (for state with no event to await)."""
    deadline = time.monotonic() + within
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
