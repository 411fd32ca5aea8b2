"""The simulated upstream's HTTP server: routing, recording, the control API, faults, and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from otelgate import __version__

from . import anthropic as ant
from . import openai as oai
from .answers import Api, Reply, build_reply, prompt_tokens
from .scripts import DEFAULT_QUEUE, QUEUE_HEADER, ScriptBook
from .steps import ScriptError, Step

# (method, path) -> (api, operation). The api decides the error shape; "models" decides it by header.
ENDPOINTS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/v1/messages"): ("anthropic", "messages"),
    ("POST", "/v1/messages/count_tokens"): ("anthropic", "count_tokens"),
    ("POST", "/v1/chat/completions"): ("chat", "chat"),
    ("POST", "/v1/responses"): ("responses", "responses"),
    ("GET", "/v1/models"): ("models", "models"),
}
GENERATING = frozenset({"messages", "chat", "responses"})  # only these consume queued steps
QUEUE_PREFIX = "/_sim/q/"
JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"
# A line that is no SSE field, then an event whose data is cut-off JSON (named, so SDKs that skip
# unnamed events still try to parse it).
_NOT_SSE = b"this line is not server-sent events\n"
GARBAGE = {
    "anthropic": _NOT_SSE + b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"de\n\n',
    "chat": _NOT_SSE + b'data: {"id":"chatcmpl-trunc","object":"chat.completion.chu\n\n',
    "responses": _NOT_SSE + b'event: response.output_text.delta\ndata: {"type":"response.output_te\n\n',
}
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(slots=True)
class SimRequest:
    """One request as the sim received it (control-API calls are not recorded)."""

    method: str
    path: str  # as received, including any /_sim/q/{name} prefix
    route: str  # the API path without the queue prefix, e.g. /v1/messages
    headers: CIMultiDictProxy[str]
    body: bytes
    queue: str
    time: float
    step: dict[str, Any] | None = None  # the scripted step applied, if any

    def json(self) -> Any:
        return json.loads(self.body)

    def to_dict(self) -> dict[str, Any]:
        try:
            body: Any = self.json() if self.body else None
        except ValueError:
            body = self.body.decode("utf-8", "replace")
        return {"method": self.method, "path": self.path, "route": self.route, "queue": self.queue,
                "time": self.time, "headers": dict(self.headers), "body": body, "step": self.step}


@dataclass(slots=True)
class _Call:
    """Per-request context handed to the renderers."""

    request: web.Request
    api: str
    step: Step | None
    body: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0


class SimUpstream:
    """A scripted stand-in for the Anthropic and OpenAI APIs on a loopback port. See the package docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, chunks: int = 5, latency_ms: float = 0.0,
                 max_recorded: int = 20_000, require_auth: bool = False,
                 anthropic_models: list[tuple[str, str, str]] | None = None,
                 openai_models: list[tuple[str, int, str]] | None = None) -> None:
        self.host = host
        self.port = port
        self.chunks = max(1, chunks)
        self.latency = latency_ms / 1000.0
        self.require_auth = require_auth
        self._book = ScriptBook()
        self._requests: deque[SimRequest] = deque(maxlen=max_recorded)
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._anthropic_model_list = anthropic_models or ant.MODELS
        self._openai_model_list = openai_models or oai.MODELS
        self._anthropic_models = ant.models_body(self._anthropic_model_list)
        self._openai_models = oai.models_body(self._openai_model_list)

    # --- lifecycle ---

    async def start(self) -> SimUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a stalled handler stops when its client goes away, instead of lingering.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SimUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    def in_thread(cls, *args: Any, **kwargs: Any) -> ThreadedSim:
        """A sync context manager running a new sim on its own event loop in a background thread."""
        return ThreadedSim(cls(*args, **kwargs))

    # --- public API ---

    @property
    def url(self) -> str:
        """The Anthropic base URL (``http://host:port``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def queue_url(self, name: str) -> str:
        """Anthropic base URL whose requests draw from the named queue (append ``/v1`` for OpenAI)."""
        return f"{self.url}{QUEUE_PREFIX}{name}"

    def script(self, steps: Iterable[Any] | str, name: str = DEFAULT_QUEUE) -> int:
        """Append validated steps (dicts or YAML text) to a named queue; returns how many were queued."""
        return self._book.script(steps, name)

    def remaining(self, name: str = DEFAULT_QUEUE) -> int:
        """Steps still queued under ``name`` (0 once a script has been fully consumed)."""
        return self._book.remaining(name)

    @property
    def requests(self) -> list[SimRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, name: str) -> list[SimRequest]:
        with self._lock:
            return [r for r in self._requests if r.queue == name]

    def reset(self) -> None:
        """Forget every queued step, header-sequence counter and recorded request."""
        self._book.reset()
        with self._lock:
            self._requests.clear()

    # --- dispatch ---

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        queue: str | None = None
        if path.startswith("/_sim/"):
            if not path.startswith(QUEUE_PREFIX):
                return await self._control(request, path)
            name, _, tail = path[len(QUEUE_PREFIX):].partition("/")
            queue, path = name, "/" + tail
        if not queue:
            queue = request.headers.get(QUEUE_HEADER, DEFAULT_QUEUE)
        endpoint = ENDPOINTS.get((request.method, path))
        if endpoint is None and request.method == "GET" and path.startswith("/v1/models/"):
            endpoint = ("models", "model")
        api = endpoint[0] if endpoint else "models"
        if api == "models":
            anthropic_shaped = "anthropic-version" in request.headers or path.startswith("/v1/messages")
            api = "anthropic" if anthropic_shaped else "chat"
        body_bytes = await request.read()
        record = SimRequest(request.method, request.path, path, request.headers, body_bytes, queue, time.time())
        with self._lock:
            self._requests.append(record)
        call = _Call(request, api, None, started=time.monotonic())
        if endpoint is None:
            return self._error(call, 404, f"Not found: {request.method} {path}", None, None)
        if self.require_auth and not (request.headers.get("x-api-key") or request.headers.get("authorization")):
            return self._error(call, 401, None, None, None)
        op = endpoint[1]
        if request.method == "POST":
            try:
                call.body = json.loads(body_bytes)
            except ValueError:
                return self._error(call, 400, "There was an error parsing the body: invalid JSON", None, None)
            problem = self._validate(call, op)
            if problem is not None:
                return problem
        try:
            step = self._book.select(queue, request.headers, consume_queue=op in GENERATING)
        except ScriptError as exc:
            return self._error(call, 400, f"otelgate sim: {exc}", None, None)
        call.step = step
        if step is not None:
            record.step = dict(step.raw)

        delay = self.latency + (step.delay if step else 0.0)
        if step is not None and step.kind == "fault":
            if step.fault == "reset_before_headers":
                return _kill(request, rst=True)
            if step.fault == "stall_before_headers":
                delay += step.seconds
        if delay:
            await asyncio.sleep(delay)
        if step is not None and step.kind == "error":
            return self._error(call, step.status, step.message, step.error_type, step.code)
        return await getattr(self, "_op_" + op)(call)

    def _validate(self, call: _Call, op: str) -> web.Response | None:
        if call.api == "anthropic":
            msg = ant.validate(call.body, count_tokens=op == "count_tokens")
            return None if msg is None else self._error(call, 400, msg, None, None)
        problem = oai.validate(call.body, call.api)
        if problem is None:
            return None
        msg, param, code = problem
        return self._error(call, 400, msg, None, code, param=param)

    # --- responses ---

    def _headers(self, call: _Call) -> dict[str, str]:
        if call.api == "anthropic":
            hdrs = ant.headers(ant.request_id())
        else:
            hdrs = oai.headers(oai.request_id(), call.started)
        if call.step is not None and call.step.headers:
            hdrs.update(call.step.headers)
        return hdrs

    def _error(self, call: _Call, status: int, message: str | None, etype: str | None, code: str | None,
               param: str | None = None) -> web.Response:
        hdrs = self._headers(call)
        if call.api == "anthropic":
            body = ant.error_body(status, message, etype, hdrs["request-id"])
        else:
            body = oai.error_body(status, message, etype, code, param)
        return web.Response(status=status, body=body, headers=hdrs, content_type=JSON)

    async def _op_models(self, call: _Call) -> web.StreamResponse:
        body = self._anthropic_models if call.api == "anthropic" else self._openai_models
        return await self._send_json(call, body)

    async def _op_model(self, call: _Call) -> web.StreamResponse:
        model_id = call.request.path.rpartition("/")[2]
        if call.api == "anthropic":
            found = [m for m in self._anthropic_model_list if m[0] == model_id]
            body = ant.model_body(found[0]) if found else None
        else:
            found_oai = [m for m in self._openai_model_list if m[0] == model_id]
            body = oai.model_body(found_oai[0]) if found_oai else None
        if body is None:
            return self._error(call, 404, f"model: {model_id}", None, "model_not_found")
        return await self._send_json(call, body)

    async def _op_count_tokens(self, call: _Call) -> web.StreamResponse:
        return await self._send_json(call, ant.count_tokens_body(prompt_tokens(call.body, "anthropic")))

    def _reply(self, call: _Call) -> Reply:
        api: Api = call.api  # type: ignore[assignment]
        return build_reply(call.step, call.body, api, self.chunks)

    async def _op_messages(self, call: _Call) -> web.StreamResponse:
        reply, msg_id = self._reply(call), ant.b62_id("msg_01")
        if call.body.get("stream") is True:
            return await self._send_stream(call, ant.events(reply, msg_id),
                                           lambda _n: ant.error_event(_message(call.step), _etype(call.step)))
        return await self._send_json(call, ant.message(reply, msg_id))

    async def _op_chat(self, call: _Call) -> web.StreamResponse:
        reply, cid, created = self._reply(call), oai.chat_id(), int(time.time())
        if call.body.get("stream") is True:
            opts = call.body.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            return await self._send_stream(call, oai.chat_chunks(reply, cid, created, include_usage),
                                           lambda _n: oai.chat_error_chunk(_message(call.step), _etype(call.step)))
        return await self._send_json(call, oai.chat_completion(reply, cid, created))

    async def _op_responses(self, call: _Call) -> web.StreamResponse:
        reply, rid, created = self._reply(call), oai.response_id(), int(time.time())
        if call.body.get("stream") is True:
            return await self._send_stream(call, oai.response_events(reply, rid, created, call.body),
                                           lambda n: oai.response_error_event(_message(call.step), None, n))
        return await self._send_json(call, oai.response(reply, rid, created, call.body))

    async def _send_json(self, call: _Call, body: bytes) -> web.StreamResponse:
        step, request = call.step, call.request
        fault = step.fault if step is not None else None
        if fault is None or fault == "stall_before_headers":
            return web.Response(body=body, headers=self._headers(call), content_type=JSON)
        if fault == "error_mid_stream":  # no stream to break: the error becomes the whole answer
            return self._error(call, 500, step.message, step.error_type, None)  # type: ignore[union-attr]
        if fault in ("malformed_sse", "truncated_json") and (fault == "malformed_sse" or step.mode == "invalid"):
            cut = body[: len(body) // 2]  # complete response, but its body is not JSON
            return web.Response(body=cut, headers=self._headers(call), content_type=JSON)
        # The remaining faults act on the body after the headers went out, which a Content-Length announces.
        resp = web.StreamResponse(headers=self._headers(call))
        resp.content_type = JSON
        resp.content_length = len(body)
        await resp.prepare(request)
        if fault == "stall_mid_stream":
            await asyncio.sleep(step.seconds)  # type: ignore[union-attr]
        elif fault == "slow_drip":
            size = max(1, -(-len(body) // self.chunks))
            while len(body) > size:
                await resp.write(body[:size])
                body = body[size:]
                await asyncio.sleep(step.interval)  # type: ignore[union-attr]
        else:  # reset_mid_stream, truncated_json (cut), end_stream_early: half a body, then the connection ends
            await resp.write(body[: len(body) // 2])
            return await _kill_after_flush(request, resp, rst=fault == "reset_mid_stream")
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def _send_stream(self, call: _Call, events: list[bytes],
                           error_event: Callable[[int], bytes]) -> web.StreamResponse:
        step, request = call.step, call.request
        hdrs = self._headers(call)
        hdrs["cache-control"] = "no-cache"
        resp = web.StreamResponse(headers=hdrs)
        resp.content_type = "text/event-stream"
        resp.charset = "utf-8"
        await resp.prepare(request)
        fault = step.fault if step is not None else None
        if fault is None or fault == "stall_before_headers":
            # Fast path: one write per event, nothing else.
            for ev in events:
                await resp.write(ev)
            await resp.write_eof()
            return resp
        assert step is not None
        at = step.after_events if step.after_events is not None else len(events) // 2
        interval = step.interval if fault == "slow_drip" else 0.0
        for i, ev in enumerate(events):
            if i == at:
                if fault == "stall_mid_stream":
                    await asyncio.sleep(step.seconds)
                elif fault == "reset_mid_stream":
                    return await _kill_after_flush(request, resp, rst=True)
                elif fault == "malformed_sse":
                    await resp.write(GARBAGE[call.api])
                elif fault == "truncated_json":
                    await resp.write(ev[: len(ev) // 2])
                    return await _kill_after_flush(request, resp, rst=False)
                elif fault == "end_stream_early":
                    await resp.write_eof()  # a clean end of a stream that is not finished
                    return resp
                elif fault == "error_mid_stream":
                    await resp.write(error_event(i))
                    await resp.write_eof()
                    return resp
            await resp.write(ev)
            if interval and i < len(events) - 1:
                await asyncio.sleep(interval)
        await resp.write_eof()
        return resp

    # --- control API ---

    async def _control(self, request: web.Request, path: str) -> web.StreamResponse:
        route = (request.method, path)
        if route == ("GET", "/_sim/health"):
            return web.json_response({"status": "ok", "version": __version__, "requests": len(self._requests),
                                      "queues": self._book.queues()})
        if route == ("POST", "/_sim/reset"):
            self.reset()
            return web.json_response({"status": "reset"})
        if route == ("GET", "/_sim/requests"):
            name = request.query.get("queue")
            reqs = self.requests if name is None else self.requests_for(name)
            return web.json_response([r.to_dict() for r in reqs])
        if route == ("POST", "/_sim/script"):
            try:
                data = await request.json()
            except ValueError:
                return web.json_response({"error": "body must be JSON: {\"name\": ..., \"steps\": [...]}"},
                                         status=400)
            if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
                return web.json_response({"error": "body must be {\"name\": ..., \"steps\": [...]}"}, status=400)
            name = data.get("name", DEFAULT_QUEUE)
            if not isinstance(name, str) or not name or "/" in name:
                return web.json_response({"error": "name must be a non-empty string without '/'"}, status=400)
            try:
                count = self.script(data["steps"], name)
            except ScriptError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"name": name, "queued": count, "remaining": self.remaining(name)})
        return web.json_response({"error": f"unknown sim control route {request.method} {path}"}, status=404)


def _message(step: Step | None) -> str | None:
    return step.message if step is not None else None


def _etype(step: Step | None) -> str | None:
    return step.error_type if step is not None else None


def _kill(request: web.Request, *, rst: bool) -> web.Response:
    """End the connection: RST (SO_LINGER 0) for resets, FIN for truncations. aiohttp then fails quietly."""
    transport = request.transport
    if transport is not None:
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        # close() flushes what was already written, then the socket closes (with RST when lingering is 0).
        transport.close()
    return web.Response()


async def _kill_after_flush(request: web.Request, resp: web.StreamResponse, *, rst: bool) -> web.StreamResponse:
    # transport.close() sends what is buffered before closing, so the client sees the events *then* the break.
    _kill(request, rst=rst)
    return resp


class ThreadedSim:
    """Runs a SimUpstream on a private event loop in a daemon thread; ``with`` yields the (thread-safe) sim."""

    def __init__(self, sim: SimUpstream) -> None:
        self.sim = sim
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SimUpstream:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="otelgate-sim", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), loop).result(timeout=10)
        return self.sim

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None
