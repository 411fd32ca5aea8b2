"""Per-request caps and per-minute rate limits, before anything is reserved or sent.

- ``max_tokens_per_request``: a larger (or missing) output cap is lowered to the limit and the agent is told in
  ``x-otelgate-max-tokens-clamped: <asked>-><cap>``; with ``on_max_tokens: refuse`` a larger one is a 400.
- ``max_input_tokens``: the estimated prompt size (no tokenizer; deliberately a little high) may not exceed it.
- ``max_usd_per_request``: the priced worst case (estimated input + max_tokens) may not exceed it.
- ``requests_per_minute`` / ``tokens_per_minute``: token buckets in the budget store, shared by every replica;
  a request takes its worst-case tokens (estimate + max_tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otelgate.budgets import (
    Ledger,
    RateAsk,
    StoreUnavailable,
    estimate_input_tokens,
    requested_max_output_tokens,
)
from otelgate.errors import GatewayError
from otelgate.filters.budget import (
    RATE_STATE,
    folds_rate_limits,
    make_pricing,
    open_store,
    refusal_error,
    store_error,
)

if TYPE_CHECKING:
    from otelgate.config import Limits, Settings
    from otelgate.context import RequestContext

CLAMP_HEADER = "x-otelgate-max-tokens-clamped"


def _uses_rate_limits(settings: Settings) -> bool:
    every = [settings.defaults.limits, *(key.limits for key in settings.keys)]
    return any(lim.requests_per_minute or lim.tokens_per_minute for lim in every)


class LimitsFilter:
    name = "limits"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pricing = make_pricing(settings)
        self.ledger: Ledger | None = None

    async def start(self) -> None:
        # Only rate limits need the store; without any, this filter holds no connection at all.
        if self.ledger is None and _uses_rate_limits(self.settings):
            self.ledger = open_store(self.settings)

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()
            self.ledger = None

    async def request(self, ctx: RequestContext) -> None:
        if not ctx.route.generates or ctx.principal is None or ctx.json is None or ctx.model is None:
            return
        limits = ctx.principal.limits
        who = f"key {ctx.principal.key_id}"
        self._max_tokens(ctx, limits, who)
        needs_estimate = (limits.max_input_tokens or limits.max_usd_per_request or limits.tokens_per_minute)
        if not needs_estimate and not limits.requests_per_minute:
            return
        estimate = estimate_input_tokens(ctx.json) if needs_estimate else 0
        max_out = ctx.max_tokens or requested_max_output_tokens(ctx.json)
        if limits.max_input_tokens and estimate > limits.max_input_tokens:
            raise GatewayError(
                "invalid_request",
                f"input of about {estimate:,} tokens exceeds the per-request limit of "
                f"{limits.max_input_tokens:,} input tokens for {who}",
                reason="input_limit",
            )
        if limits.max_usd_per_request:
            worst = self.pricing.worst_case(ctx.model, estimate, max_out)
            if worst > limits.max_usd_per_request:
                raise GatewayError(
                    "invalid_request",
                    f"worst-case cost ${worst:,.4f} of this request (about {estimate:,} input tokens + "
                    f"max_tokens {max_out:,} on {ctx.model}) exceeds the per-request limit of "
                    f"${limits.max_usd_per_request:,.2f} for {who}; lower max_tokens or the input",
                    reason="request_cost",
                )
        if limits.requests_per_minute or limits.tokens_per_minute:
            await self._rate(ctx, limits, estimate + max_out)

    def _max_tokens(self, ctx: RequestContext, limits: Limits, who: str) -> None:
        cap = limits.max_tokens_per_request
        if cap is None or (ctx.max_tokens is not None and ctx.max_tokens <= cap):
            return
        asked = ctx.max_tokens
        if asked is not None and limits.on_max_tokens == "refuse":
            raise GatewayError(
                "invalid_request",
                f"max_tokens {asked:,} exceeds the per-request limit of {cap:,} for {who}",
                reason="max_tokens",
            )
        # A request that sets no cap at all (OpenAI allows it) gets the limit as its cap.
        assert ctx.json is not None
        ctx.provider.set_max_tokens(ctx.json, ctx.route, cap)
        ctx.body_modified = True
        ctx.max_tokens = cap
        original = "unset" if asked is None else str(asked)
        ctx.response_headers[CLAMP_HEADER] = f"{original}->{cap}"
        ctx.event("limits.max_tokens_clamped", requested=original, cap=cap)

    async def _rate(self, ctx: RequestContext, limits: Limits, tokens: int) -> None:
        assert ctx.principal is not None
        if folds_rate_limits(self.settings):
            # The budget filter checks it in its reserve: one store call for both, and a request the budget
            # refuses takes nothing from the rate buckets either.
            ctx.state[RATE_STATE] = RateAsk(ctx.principal.key_id, limits.requests_per_minute,
                                            limits.tokens_per_minute, tokens)
            return
        if self.ledger is None:  # started with no rate limit configured (e.g. a test building the app)
            await self.start()
        assert self.ledger is not None
        try:
            refusal = await self.ledger.rate_limit(
                ctx.principal.key_id, limits.requests_per_minute, limits.tokens_per_minute, tokens
            )
        except StoreUnavailable as exc:
            raise store_error(exc) from None
        if refusal is not None:
            ctx.event("limits.rate_limited", unit=refusal.unit, limit=refusal.limit)
            raise refusal_error(refusal)
