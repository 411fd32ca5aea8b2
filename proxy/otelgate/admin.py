"""Admin API: spend and limits per key/team/global/window, the key list, and budget resets.

Every route needs the admin key (``x-admin-key: K`` or ``Authorization: Bearer K``, compared in constant time).
With no ``auth.admin_key`` configured the routes answer 404, exactly like an unknown path: an admin surface that
cannot be protected does not exist. Answers carry ids, limits and key hashes, never a key or any other secret.

    GET  /admin/usage[?scope=key|team|global|session][&id=ID][&key=KEY_ID]
    GET  /admin/keys
    POST /admin/budgets/{scope}/{id}/reset
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from otelgate.budgets import Ledger, StoreUnavailable, UsageRow
from otelgate.budgets.ledger import SCOPES
from otelgate.config import Settings
from otelgate.filters.budget import BudgetFilter, configured_limits

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


def _presented(request: web.Request) -> str | None:
    key = request.headers.get("x-admin-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _guarded(settings: Settings, handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        secret = settings.auth.admin_key
        if secret is None or not secret.get_secret_value():
            return _error(404, "not_found_error", f"no route for {request.method} {request.path}")
        presented = _presented(request)
        if presented is None or not hmac.compare_digest(
            presented.encode(), secret.get_secret_value().encode()
        ):
            return _error(401, "authentication_error",
                          "admin key required: send it as x-admin-key or Authorization: Bearer")
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            return _error(503, "unavailable", f"budget store unavailable: {exc}")

    return guarded


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_dict(row: UsageRow) -> dict[str, Any]:
    return {
        "scope": row.scope,
        "id": row.scope_id,
        "window": row.window.key,
        "unit": row.unit,
        "spent": row.spent,
        "reserved": row.reserved,
        "limit": row.limit,
        "remaining": row.remaining,
        "window_start": _iso(row.window_start) if row.window.kind in ("day", "month") else None,
        "reset_at": _iso(row.reset_at),
    }


async def collect_usage(ledger: Ledger, settings: Settings, *, scope: str | None = None,
                        scope_id: str | None = None, key: str | None = None) -> list[UsageRow]:
    """Configured budgets (also those with nothing spent yet) plus every limit the store has seen in use
    (defaults budgets of unlisted keys, sessions). Sessions only when asked for by scope: they are many."""
    now = time.time()
    wanted = configured_limits(settings, key)
    if scope is not None:
        wanted = [lim for lim in wanted if lim.scope == scope and (scope_id is None or lim.scope_id == scope_id)]
    rows = await ledger.usage(limits=wanted, now=now) if wanted else []
    seen = {(r.scope, r.scope_id, r.window.key, r.unit) for r in rows}
    if key is None:
        extra = await ledger.usage(scope, scope_id, now=now)
        for r in extra:
            if (r.scope, r.scope_id, r.window.key, r.unit) in seen:
                continue
            if r.scope == "session" and scope != "session":
                continue
            seen.add((r.scope, r.scope_id, r.window.key, r.unit))
            rows.append(r)
    order = {s: i for i, s in enumerate(SCOPES)}
    rows.sort(key=lambda r: (order.get(r.scope, 9), r.scope_id, r.window.key, r.unit))
    return rows


def add_routes(app: web.Application, filters: Sequence[Any]) -> None:
    budget = next((f for f in filters if isinstance(f, BudgetFilter)), None)
    if budget is None:
        return
    settings = budget.settings

    def ledger() -> Ledger:
        if budget.ledger is None:
            raise StoreUnavailable("the budget store is not open")
        return budget.ledger

    async def usage(request: web.Request) -> web.StreamResponse:
        q = request.query
        scope = q.get("scope") or None
        if scope is not None and scope not in SCOPES:
            return _error(400, "invalid_request_error", f"scope must be one of {', '.join(SCOPES)}")
        rows = await collect_usage(ledger(), settings, scope=scope, scope_id=q.get("id") or None,
                                   key=q.get("key") or None)
        return web.json_response({"usage": [row_dict(r) for r in rows], "store": _store_name(settings)})

    async def keys(request: web.Request) -> web.StreamResponse:
        out = [
            {
                "id": key.id,
                "team": key.team,
                "key_sha256": key.key_sha256,
                "limits": key.limits.model_dump(mode="json", exclude_none=True),
                "budgets": [b.model_dump(mode="json", exclude_none=True) for b in key.budgets],
                "allowed_tools": key.allowed_tools,
            }
            for key in settings.keys
        ]
        defaults = {
            "limits": settings.defaults.limits.model_dump(mode="json", exclude_none=True),
            "budgets": [b.model_dump(mode="json", exclude_none=True) for b in settings.defaults.budgets],
        }
        return web.json_response({"keys": out, "defaults": defaults, "auth_mode": settings.auth.mode})

    async def reset(request: web.Request) -> web.StreamResponse:
        scope, scope_id = request.match_info["scope"], request.match_info["id"]
        if scope not in SCOPES:
            return _error(400, "invalid_request_error", f"scope must be one of {', '.join(SCOPES)}")
        await ledger().reset(scope, scope_id)
        rows = await collect_usage(ledger(), settings, scope=scope, scope_id=scope_id)
        return web.json_response({"reset": {"scope": scope, "id": scope_id},
                                  "usage": [row_dict(r) for r in rows]})

    app.router.add_get("/admin/usage", _guarded(settings, usage), allow_head=False)
    app.router.add_get("/admin/keys", _guarded(settings, keys), allow_head=False)
    app.router.add_post("/admin/budgets/{scope}/{id}/reset", _guarded(settings, reset))


def _store_name(settings: Settings) -> str:
    """The store's kind and location without credentials (a redis URL may carry a password)."""
    url = settings.budgets.store
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}://{rest.split('?', 1)[0]}"
