"""The aiohttp application: routes, the filter chain, lifecycle, and `serve`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from otelgate import admin, health
from otelgate.config import Settings
from otelgate.context import Filter
from otelgate.errors import GatewayError
from otelgate.filters.auth import AuthFilter
from otelgate.filters.budget import BudgetFilter
from otelgate.filters.limits import LimitsFilter
from otelgate.filters.permissions import PermissionsFilter
from otelgate.filters.screening import ScreeningFilter
from otelgate.health import STATE_KEY
from otelgate.pipeline import Pipeline
from otelgate.providers import PROVIDERS, Route
from otelgate.upstream import Upstream

log = logging.getLogger("otelgate")

# Only these upstream paths are ever forwarded: nothing leaves the gateway that is not accounted for.
_ROUTES: list[tuple[str, str, Route]] = [
    ("POST", "/v1/messages", Route("anthropic", "messages", "chat", "/v1/messages", "POST", True)),
    (
        "POST",
        "/v1/messages/count_tokens",
        Route("anthropic", "count_tokens", "count_tokens", "/v1/messages/count_tokens", "POST", False),
    ),
    ("POST", "/v1/chat/completions", Route("openai", "chat_completions", "chat", "/chat/completions", "POST", True)),
    ("POST", "/v1/responses", Route("openai", "responses", "chat", "/responses", "POST", True)),
]
_MODELS = {
    "anthropic": Route("anthropic", "models", "models", "/v1/models", "GET", False),
    "openai": Route("openai", "models", "models", "/models", "GET", False),
}

PIPELINE_KEY: web.AppKey[Pipeline] = web.AppKey("pipeline", Pipeline)
SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings", Settings)


def _guess_provider(request: web.Request) -> str:
    path = request.path
    if path.startswith("/anthropic/"):
        return "anthropic"
    if path.startswith("/openai/"):
        return "openai"
    headers = request.headers
    if "anthropic-version" in headers or "x-api-key" in headers or path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def provider_error(request: web.Request, error: GatewayError, provider: str | None = None) -> web.Response:
    adapter = PROVIDERS[provider or _guess_provider(request)]
    return web.Response(
        status=error.status,
        body=adapter.encode_error(error),
        headers={"content-type": "application/json", **error.headers},
    )


def _route_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[PIPELINE_KEY].handle(request, route)

    return handler


def _models_handler(fixed: str | None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        name = fixed or ("anthropic" if "anthropic-version" in request.headers else "openai")
        base = _MODELS[name]
        model_id = request.match_info.get("model_id")
        route = (
            base
            if model_id is None
            else Route(name, "models", "models", f"{base.upstream_path}/{model_id}", "GET", False)
        )
        return await request.app[PIPELINE_KEY].handle(request, route)

    return handler


_KNOWN_PATHS = frozenset(
    [path for _, path, _ in _ROUTES] + [f"/{route.provider}{path}" for _, path, route in _ROUTES]
)


async def _not_found(request: web.Request) -> web.StreamResponse:
    if request.path in _KNOWN_PATHS:
        return provider_error(
            request,
            GatewayError("invalid_request", f"method {request.method} is not allowed on {request.path}", status=405),
        )
    return provider_error(
        request,
        GatewayError("not_found", f"no route for {request.method} {request.path}", reason="not_found"),
    )


@web.middleware
async def _errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return provider_error(
            request,
            GatewayError("invalid_request", f"method {request.method} is not allowed on {request.path}", status=405),
        )
    except web.HTTPNotFound:
        return await _not_found(request)
    except web.HTTPException as exc:
        kind = "too_large" if exc.status == 413 else "invalid_request"
        return provider_error(request, GatewayError(kind, exc.reason or "bad request", status=exc.status))


def build_filters(settings: Settings, telemetry: Any | None) -> list[Filter]:
    """The chain, in order. Telemetry observes first so its `done` runs last, after cost is known."""
    filters: list[Filter] = []
    if telemetry is not None:
        filters.append(telemetry.filter)
    filters.append(AuthFilter(settings))
    filters.append(LimitsFilter(settings))
    filters.append(ScreeningFilter(settings))
    filters.append(PermissionsFilter(settings))
    filters.append(BudgetFilter(settings, telemetry))
    return filters


def create_app(
    settings: Settings, *, telemetry: Any | None = None, extra_filters: Sequence[Filter] = ()
) -> web.Application:
    app = web.Application(middlewares=[_errors_middleware], client_max_size=settings.server.max_body_bytes)
    upstreams = {
        "anthropic": Upstream("anthropic", settings.upstreams.anthropic),
        "openai": Upstream("openai", settings.upstreams.openai),
    }
    filters = build_filters(settings, telemetry)
    pipeline = Pipeline(settings, [*filters, *extra_filters], upstreams)
    # Which session a stored Responses answer belongs to is shared through the budgets' store, so that a
    # continuation reaching another worker or replica stays in its run.
    pipeline.sessions.shared = next((f for f in filters if isinstance(f, BudgetFilter)), None)
    if telemetry is not None:
        # Circuit state and in-flight counts are read at collection time, never on the request path.
        for upstream in upstreams.values():
            telemetry.register_circuit_source(upstream.circuit_states)
            telemetry.register_inflight_source(upstream.inflight_by_address)
    app[PIPELINE_KEY] = pipeline
    app[SETTINGS_KEY] = settings
    app[STATE_KEY] = {"draining": False, "telemetry": telemetry, "upstreams": upstreams}

    for method, path, route in _ROUTES:
        handler = _route_handler(route)
        app.router.add_route(method, path, handler)
        app.router.add_route(method, f"/{route.provider}{path}", handler)
    app.router.add_get("/v1/models", _models_handler(None), allow_head=False)
    app.router.add_get("/v1/models/{model_id}", _models_handler(None), allow_head=False)
    for name in ("anthropic", "openai"):
        app.router.add_get(f"/{name}/v1/models", _models_handler(name), allow_head=False)
        app.router.add_get(f"/{name}/v1/models/{{model_id}}", _models_handler(name), allow_head=False)
    app.router.add_get("/health", health.liveness, allow_head=True)
    app.router.add_get("/health/deep", health.readiness, allow_head=False)
    if telemetry is not None:
        app.router.add_get("/metrics", telemetry.metrics_handler, allow_head=False)
    admin.add_routes(app, pipeline.filters)
    app.router.add_route("*", "/{tail:.*}", _not_found)

    # Filters may own resources (a store connection, a classifier): `start`/`close` hooks run with the app, and
    # `health_checks()` adds named readiness probes to /health/deep.
    async def startup(app: web.Application) -> None:
        for upstream in upstreams.values():
            await upstream.start()
        for stage in pipeline.filters:
            start = getattr(stage, "start", None)
            if start is not None:
                await start()
            checks = getattr(stage, "health_checks", None)
            if checks is not None:
                app[STATE_KEY].setdefault("checks", {}).update(checks())

    async def cleanup(app: web.Application) -> None:
        await pipeline.sessions.close()  # its last notes go to the store before the store closes
        for stage in reversed(pipeline.filters):
            close = getattr(stage, "close", None)
            if close is not None:
                await close()
        for upstream in upstreams.values():
            await upstream.close()
        if telemetry is not None:
            await telemetry.shutdown()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


def make_telemetry(settings: Settings, **kwargs: Any) -> Any | None:
    if not settings.telemetry.enabled:
        return None
    try:
        from otelgate.telemetry import Telemetry
    except ImportError:  # pragma: no cover - the telemetry package ships with otelgate
        return None
    return Telemetry.from_settings(settings, **kwargs)


def runner_for(app: web.Application, settings: Settings) -> web.AppRunner:
    return web.AppRunner(
        app,
        # An agent that disconnects cancels its handler, which cancels the upstream request at once.
        handler_cancellation=True,
        shutdown_timeout=settings.server.drain_seconds,
        max_field_size=settings.server.max_header_bytes,
        max_line_size=settings.server.max_header_bytes,
        # Request bodies arrive as sent; ingress decodes gzip/deflate itself and refuses other encodings in the
        # provider's error shape (aiohttp's own decoder answers plain-text 400s, or 500s on a corrupt body).
        auto_decompress=False,
        access_log=None,
    )
