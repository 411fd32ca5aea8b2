"""Health checks: liveness (the process serves) and readiness (store, upstreams, telemetry)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

CHECK_TIMEOUT = 2.0

# Shared lifecycle state of the app: draining flag, upstreams, telemetry, extra readiness probes.
STATE_KEY: web.AppKey[dict[str, Any]] = web.AppKey("state", dict)


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _tcp_check(host: str, port: int) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 1)}
    except (OSError, TimeoutError) as exc:
        return {"ok": False, "error": type(exc).__name__}


async def readiness(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    checks: dict[str, Any] = {}
    upstreams = state["upstreams"]
    results = await asyncio.gather(*(_tcp_check(up.server_address, up.server_port) for up in upstreams.values()))
    for name, result in zip(upstreams, results, strict=True):
        checks[f"upstream:{name}"] = result
    for name, probe in state.get("checks", {}).items():
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                checks[name] = await probe()
        except Exception as exc:  # a failing probe is a failed check, not a failed endpoint
            checks[name] = {"ok": False, "error": type(exc).__name__}
    telemetry = state.get("telemetry")
    if telemetry is not None:
        checks["telemetry"] = telemetry.health()
    draining = state.get("draining", False)
    checks["draining"] = {"ok": not draining}
    ok = all(check.get("ok", False) for check in checks.values())
    return web.json_response({"status": "ok" if ok else "fail", "checks": checks}, status=200 if ok else 503)
