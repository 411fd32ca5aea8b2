"""Per-request caps and per-minute rate limits, before anything is reserved or sent.

- ``max_tokens_per_request``: a larger (or missing) output cap is lowered to the limit and the agent is told in
  ``x-otelgate-max-tokens-clamped: <asked>-><cap>``; with ``on_max_tokens: refuse`` a larger one is a 400.
- ``max_input_tokens``: the estimated prompt size (no tokenizer; deliberately a little high) may not exceed it.
- ``max_usd_per_request``: the priced worst case (estimated input + max_tokens) may not exceed it.

Rate limits (``requests_per_minute`` / ``tokens_per_minute``) live in the budget store, so the budget filter,
which owns the store, checks them in the same call as its reserve (filters/budget.py). This filter needs no store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otelgate.budgets import estimate_input_tokens, max_output_tokens
from otelgate.errors import GatewayError
from otelgate.filters.budget import make_pricing

if TYPE_CHECKING:
    from otelgate.config import Limits, Settings
    from otelgate.context import RequestContext

CLAMP_HEADER = "x-otelgate-max-tokens-clamped"


class LimitsFilter:
    name = "limits"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pricing = make_pricing(settings)

    async def request(self, ctx: RequestContext) -> None:
        if not ctx.route.generates or ctx.principal is None or ctx.json is None or ctx.model is None:
            return
        limits = ctx.principal.limits
        who = f"key {ctx.principal.key_id}"
        self._max_tokens(ctx, limits, who)
        if not limits.max_input_tokens and not limits.max_usd_per_request:
            return
        estimate = estimate_input_tokens(ctx.json)
        max_out = max_output_tokens(ctx.json, ctx.max_tokens)
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
