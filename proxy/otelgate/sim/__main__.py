"""``python -m otelgate.sim``: run the simulated upstream standalone until SIGINT/SIGTERM.

The first line on stdout is the base URL alone, so a parent process started with ``--port 0`` can read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from .server import SimUpstream
from .steps import ScriptError, load_steps


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m otelgate.sim", description="Simulated Anthropic/OpenAI upstream.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790, help="0 picks a free port (default 8790)")
    p.add_argument("--chunks", type=int, default=5, help="text deltas per streamed answer (default 5)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer's headers")
    p.add_argument("--require-auth", action="store_true", help="401 unless x-api-key or Authorization is sent")
    p.add_argument("--script", metavar="FILE", help="YAML steps (a list, or a mapping with an llm: list) to queue")
    p.add_argument("--uvloop", action="store_true", help="use uvloop if installed (for benchmarks)")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimUpstream(args.host, args.port, chunks=args.chunks, latency_ms=args.latency_ms,
                           require_auth=args.require_auth) as sim:
        if args.script:
            sim.script(load_steps(args.script))
        print(sim.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    if args.script:  # fail before binding a port, with the step that is wrong
        try:
            load_steps(args.script)
        except (OSError, ScriptError) as exc:
            raise SystemExit(f"otelgate sim: {args.script}: {exc}") from None
    if args.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.run(_serve(args))
            return
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
