"""Ingress authentication: who is calling, and which credential goes upstream.

pass-through: the agent's own provider key goes upstream untouched; the principal is the configured key with the
same sha256, else an anonymous principal named by a hash prefix with the `defaults` limits.
virtual_keys: the agent presents an otelgate key; only its sha256 is configured; the provider key is injected.
"""

from __future__ import annotations

import hashlib

from otelgate.config import KeyConfig, Settings
from otelgate.context import Principal, RequestContext
from otelgate.errors import GatewayError


def _credential(ctx: RequestContext) -> tuple[str, str] | None:
    """(header name as it arrived, key). Both styles are accepted: x-api-key (Claude Code, older clients) and
    Authorization: Bearer (current SDKs)."""
    headers = ctx.request.headers
    for name in ctx.provider.auth_headers:
        value = headers.get(name)
        if not value:
            continue
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                continue
            return name, token.strip()
        return name, value.strip()
    return None


class AuthFilter:
    name = "auth"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_hash: dict[str, KeyConfig] = {key.key_sha256.lower(): key for key in settings.keys}

    async def request(self, ctx: RequestContext) -> None:
        found = _credential(ctx)
        if found is None:
            raise GatewayError(
                "authentication",
                "missing API key: send it as x-api-key or Authorization: Bearer",
                reason="auth",
            )
        header, key = found
        digest = hashlib.sha256(key.encode()).hexdigest()
        configured = self._by_hash.get(digest)
        settings = self.settings
        if settings.auth.mode == "virtual_keys":
            if configured is None:
                raise GatewayError("authentication", "invalid API key for this gateway", reason="auth")
            upstream_key = getattr(settings.upstreams, ctx.provider.name).api_key
            if upstream_key is None:
                # A configuration error, not an outage: a 503 made every SDK retry it (Claude Code for three
                # minutes). A 500 that says not to retry ends the call at once, with the fix in the message.
                raise GatewayError(
                    "api_error",
                    f"no {ctx.provider.name} API key is configured (upstreams.{ctx.provider.name}.api_key)",
                    status=500,
                    reason="config",
                    headers={"x-should-retry": "false"},
                )
            # Same header style the agent used: never add the other one.
            value = upstream_key.get_secret_value()
            upstream_auth = (header, f"Bearer {value}" if header == "authorization" else value)
        else:
            upstream_auth = None  # the agent's own header is forwarded as it arrived
        if configured is not None:
            team = settings.team(configured.team)
            ctx.principal = Principal(
                key_id=configured.id,
                team=configured.team,
                limits=configured.limits,
                key=configured,
                team_config=team,
                upstream_auth=upstream_auth,
            )
        else:
            ctx.principal = Principal(
                key_id="sha256:" + digest[:12],
                team=None,
                limits=settings.defaults.limits,
                upstream_auth=upstream_auth,
            )
