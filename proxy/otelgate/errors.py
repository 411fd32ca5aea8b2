"""Refusals raised by any stage; the provider adapter renders them in the caller's own error shape."""

from __future__ import annotations

from typing import Literal

# Provider-neutral kinds; each adapter maps them to its own error `type` (and code).
ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "permission",
    "not_found",
    "too_large",
    "rate_limit",
    "api_error",
    "overloaded",
    "timeout",
    "unavailable",
]

_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "too_large": 413,
    "rate_limit": 429,
    "api_error": 502,
    "overloaded": 529,
    "timeout": 504,
    "unavailable": 503,
}


class GatewayError(Exception):
    """A refusal or failure decided by otelgate. `message` is shown to the agent: never put a secret or the
    offending content in it. `reason` labels otelgate.requests.rejected (budget, screening, auth, ...)."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status or _STATUS[kind]
        self.reason = reason or kind
        self.headers = headers or {}
        self.code = code
