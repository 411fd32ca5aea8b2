"""Serving: one or more worker processes, signals, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from aiohttp import web

from otelgate.app import PIPELINE_KEY, create_app, make_telemetry, runner_for
from otelgate.config import Settings
from otelgate.health import STATE_KEY

log = logging.getLogger("otelgate")


async def serve_forever(
    settings: Settings, *, sock: socket.socket | None = None, ready: Callable[[str], None] | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests finish up to
    server.drain_seconds, flush telemetry, return."""
    telemetry = make_telemetry(settings)
    app = create_app(settings, telemetry=telemetry)
    runner = runner_for(app, settings)
    await runner.setup()
    if sock is not None:
        site: web.BaseSite = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, settings.server.host, settings.server.port, reuse_port=settings.server.workers > 1)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    address = site.name
    log.info("otelgate listening on %s (pid %d)", address, os.getpid())
    if ready is not None:
        ready(address)
    await stop.wait()
    app[STATE_KEY]["draining"] = True
    log.info("draining: in-flight %d", app[PIPELINE_KEY].inflight)
    await runner.cleanup()
