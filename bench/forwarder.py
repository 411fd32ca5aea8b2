"""The floor for a Python proxy: a bare aiohttp forwarder (no policy, no parsing), about 40 lines.

    python bench/forwarder.py --upstream http://127.0.0.1:9000 --port 9100
"""

import argparse

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


def build(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512), auto_decompress=False, timeout=aiohttp.ClientTimeout(None)
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        async with app["session"].request(request.method, upstream + request.path_qs, headers=headers,
                                          data=body) as up:
            out = web.StreamResponse(status=up.status,
                                     headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    web.run_app(build(args.upstream.rstrip("/")), host="127.0.0.1", port=args.port, access_log=None, print=None)
