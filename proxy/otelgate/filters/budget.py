"""Budgets through the proxy: reserve the worst case before the call, settle the real cost after it.

`request` builds every limit that applies to the caller (key or defaults budgets, team budgets, global budgets,
the session caps) and reserves the priced worst case (estimated input + max_tokens) in all of them at once;
a refusal becomes a 429 naming the limit. `done` prices the real usage (always, for telemetry, even with no limit
configured), settles it exactly once — or releases the hold when nothing reached the upstream — and turns the
settle into usage alerts and budget gauges. The ledger does the accounting; this module only maps config and
the request context onto it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otelgate.budgets import (
    Amount,
    BudgetAlerter,
    Ledger,
    Limit,
    Pricing,
    RateAsk,
    Refusal,
    ResilientLedger,
    SettleResult,
    StoreUnavailable,
    TokenUsage,
    Window,
    estimate_input_tokens,
    max_output_tokens,
    open_ledger,
)
from otelgate.errors import GatewayError
from otelgate.sessions import is_derived

if TYPE_CHECKING:
    from otelgate.config import BudgetSpec, ModelPrice, Settings
    from otelgate.context import Principal, RequestContext

log = logging.getLogger("otelgate.budget")

NAME = "budget"


def make_pricing(settings: Settings) -> Pricing:
    """The built-in price table with the config's overrides and fallback price for unknown models."""

    def plain(price: ModelPrice) -> dict[str, Any]:
        return price.model_dump(exclude_none=True)

    cfg = settings.budgets
    return Pricing(overrides={m: plain(p) for m, p in cfg.pricing.items()}, default=plain(cfg.default_price))


def spec_limit(scope: str, scope_id: str, spec: BudgetSpec, tz: str) -> Limit:
    if spec.window == "day":
        window = Window.day(tz)
    elif spec.window == "month":
        window = Window.month(tz)
    else:
        assert spec.hours is not None
        window = Window.hours(spec.hours)
    return Limit(scope, scope_id, window, usd=spec.usd, tokens=spec.tokens)


def configured_limits(settings: Settings, key_id: str | None = None) -> list[Limit]:
    """Budgets written in the config (keys, teams, global), optionally only those that bind one key.
    Defaults budgets and session caps are per caller and only known once the caller was seen."""
    tz = settings.budgets.timezone
    out: list[Limit] = []
    teams: set[str] = set()
    for key in settings.keys:
        if key_id is not None and key.id != key_id:
            continue
        out += [spec_limit("key", key.id, spec, tz) for spec in key.budgets]
        if key.team:
            teams.add(key.team)
    for team in settings.teams:
        if key_id is None or team.id in teams:
            out += [spec_limit("team", team.id, spec, tz) for spec in team.budgets]
    out += [spec_limit("global", "all", spec, tz) for spec in settings.budgets.global_budgets]
    return out


def _standing_limits(settings: Settings, principal: Principal) -> list[Limit]:
    tz = settings.budgets.timezone
    specs = principal.key.budgets if principal.key is not None else settings.defaults.budgets
    out = [spec_limit("key", principal.key_id, spec, tz) for spec in specs]
    if principal.team_config is not None:
        out += [spec_limit("team", principal.team_config.id, spec, tz) for spec in principal.team_config.budgets]
    out += [spec_limit("global", "all", spec, tz) for spec in settings.budgets.global_budgets]
    return out


class LimitCache:
    """The key, team and global limits of each caller, built once per caller rather than per request (the
    config does not change under a running filter). An entry is only reused for the very same key and team
    config objects; the cache is bounded, since unlisted pass-through keys are unbounded in number."""

    MAX = 4096

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_key: dict[str, tuple[object, object, tuple[Limit, ...]]] = {}

    def standing(self, principal: Principal) -> tuple[Limit, ...]:
        hit = self._by_key.get(principal.key_id)
        if hit is not None and hit[0] is principal.key and hit[1] is principal.team_config:
            return hit[2]
        limits = tuple(_standing_limits(self.settings, principal))
        if len(self._by_key) >= self.MAX:
            self._by_key.clear()
        self._by_key[principal.key_id] = (principal.key, principal.team_config, limits)
        return limits


def session_scope_id(principal: Principal, session_id: str) -> str:
    """The ledger id of a caller's session: "<key id>/<session id>"."""
    return f"{principal.key_id}/{session_id}"


def principal_limits(settings: Settings, principal: Principal, session_id: str | None,
                     cache: LimitCache | None = None, derived: bool = False) -> list[Limit]:
    """The limits a request of `principal` reserves against; `derived`: the session id is the gateway's hash of
    the conversation's opening, which forgets a session sooner (budgets.derived_session_ttl_seconds)."""
    out = list(cache.standing(principal)) if cache is not None else _standing_limits(settings, principal)
    caps = principal.limits.session
    if session_id and caps is not None and (caps.max_calls or caps.max_tokens or caps.max_usd):
        budgets = settings.budgets
        window = Window.session(budgets.derived_session_ttl_seconds if derived else budgets.session_ttl_seconds)
        # A session belongs to its caller: two keys that name a run alike ("main", "run-1") must not spend each
        # other's session caps, which would let one tenant exhaust another's.
        out.append(Limit("session", session_scope_id(principal, session_id), window, usd=caps.max_usd,
                         tokens=caps.max_tokens, calls=caps.max_calls))
    return out


def refusal_error(refusal: Refusal) -> GatewayError:
    """A 429 in the caller's shape; `retry-after` when waiting helps, `x-should-retry: false` when it cannot
    (a session cap, or one request larger than the whole limit) so SDKs do not retry in vain."""
    reason = {"session": "session_limit", "rate_limit": "rate_limit"}.get(refusal.reason, "budget")
    wait = refusal.retry_after()
    headers = {"retry-after": str(wait)} if wait is not None else {"x-should-retry": "false"}
    return GatewayError("rate_limit", refusal.message(), reason=reason, headers=headers)


def store_error(exc: Exception) -> GatewayError:
    # StoreUnavailable's text already starts with "budget store unavailable"; keep the cause, not a repeat.
    cause = str(exc).removeprefix("budget store unavailable").lstrip(": ") or type(exc).__name__
    return GatewayError("unavailable", f"budget store unavailable ({cause}); refusing (on_store_error: closed)",
                        reason="store_error")


def open_store(settings: Settings) -> ResilientLedger:
    cfg = settings.budgets
    inner = open_ledger(cfg.store, reservation_ttl=cfg.reservation_ttl_seconds)
    return ResilientLedger(
        inner, on_error=cfg.on_store_error, timeout=cfg.store_timeout, down_after=cfg.store_down_after
    )


@dataclass(slots=True)
class _Hold:
    """This filter's per-request state (ctx.state["budget"])."""

    limits: list[Limit]
    worst: Amount | None  # the priced worst case; None when no limit applied (then it is only priced if needed)
    reserved: bool = False
    finished: bool = False
    alerts: list[Any] = field(default_factory=list)


class BudgetFilter:
    name = NAME

    def __init__(self, settings: Settings, telemetry: Any | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.pricing = make_pricing(settings)
        self.ledger: Ledger | None = None
        self.alerter: BudgetAlerter | None = None
        self.limit_cache = LimitCache(settings)

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.ledger is not None:
            return
        self.ledger = open_store(self.settings)
        cfg = self.settings.budgets
        self.alerter = BudgetAlerter(self.ledger, thresholds=cfg.alert_thresholds,
                                     alertmanager_url=cfg.alertmanager_url)

    async def close(self) -> None:
        if self.alerter is not None:
            await self.alerter.close()
        if self.ledger is not None:
            await self.ledger.close()
        self.ledger = self.alerter = None

    # --- notes shared through the store (sessions.SharedNotes) -----------------------------------------------
    async def remember(self, name: str, value: str, ttl_seconds: float) -> None:
        if self.ledger is not None:
            await self.ledger.remember(name, value, ttl_seconds)

    async def recall(self, name: str) -> str | None:
        return await self.ledger.recall(name) if self.ledger is not None else None

    def health_checks(self) -> dict[str, Any]:
        async def store() -> dict[str, Any]:
            if self.ledger is None:
                return {"ok": False, "error": "not started"}
            try:
                await self.ledger.ping()
            except StoreUnavailable as exc:
                return {"ok": False, "error": str(exc), "policy": self.settings.budgets.on_store_error}
            return {"ok": True}

        return {"store": store}

    # --- the request ---------------------------------------------------------------------------------------
    def worst_case(self, ctx: RequestContext) -> Amount:
        assert ctx.json is not None and ctx.model is not None
        estimate = estimate_input_tokens(ctx.json)
        max_out = max_output_tokens(ctx.json, ctx.max_tokens)
        usd = self.pricing.worst_case(ctx.model, estimate, max_out)
        return Amount(usd=usd, tokens=estimate + max_out, calls=1)

    async def request(self, ctx: RequestContext) -> None:
        if not ctx.route.generates or ctx.principal is None or ctx.json is None or ctx.model is None:
            return
        derived = ctx.session_id is not None and is_derived(ctx.session_id, ctx.session_source)
        limits = principal_limits(self.settings, ctx.principal, ctx.session_id, self.limit_cache, derived)
        caps = ctx.principal.limits
        if not limits and not caps.requests_per_minute and not caps.tokens_per_minute:
            ctx.state[NAME] = _Hold(limits, None)  # nothing to reserve: the body is not even estimated
            return
        hold = _Hold(limits, self.worst_case(ctx))
        ctx.state[NAME] = hold
        # Rate limits are checked in the same store call as the reserve: one round trip, all or nothing (a request
        # the budget refuses takes nothing from the rate buckets).
        rate = None
        if caps.requests_per_minute or caps.tokens_per_minute:
            rate = RateAsk(ctx.principal.key_id, caps.requests_per_minute, caps.tokens_per_minute, hold.worst.tokens)
        assert self.ledger is not None, "BudgetFilter.start() was not run"
        try:
            if not limits:
                assert rate is not None
                out = await self.ledger.rate_limit(rate.key_id, rate.rpm, rate.tpm, rate.tokens)
                if out is not None:
                    ctx.event("limits.rate_limited", unit=out.unit, limit=out.limit)
                    raise refusal_error(out)
                return
            out = await self.ledger.reserve(ctx.request_id, limits, hold.worst, rate=rate)
        except StoreUnavailable as exc:
            raise store_error(exc) from None
        if isinstance(out, Refusal) and out.reason == "rate_limit":
            ctx.event("limits.rate_limited", unit=out.unit, limit=out.limit)
            raise refusal_error(out)
        if isinstance(out, Refusal):
            ctx.event("budget.refused", scope=out.scope, id=out.scope_id, window=out.window.key, unit=out.unit,
                      limit=out.limit, spent=out.spent, requested=out.requested)
            raise refusal_error(out)
        hold.reserved = True
        if out.local:
            ctx.event("budget.store_degraded", policy="open")

    async def done(self, ctx: RequestContext) -> None:
        hold: _Hold | None = ctx.state.get(NAME)
        if hold is None or hold.finished:
            return
        hold.finished = True  # exactly once, whatever happens below
        actual = self._price(ctx, hold)
        if not hold.reserved or self.ledger is None:
            return
        if not ctx.attempts:
            # Refused later in the chain, or failed before any byte went upstream: nothing was spent.
            await self.ledger.release(ctx.request_id)
            return
        result = await self.ledger.settle(ctx.request_id, actual, hold.limits)
        await self._observe(ctx, result)

    def _price(self, ctx: RequestContext, hold: _Hold) -> Amount:
        """The real cost, on ctx for telemetry/logs/evals. Usage unknown after a 2xx (a stream cut before any
        usage arrived, or an encoding we could not read) is charged at the reserved worst case: the provider
        may well bill it, and overcharging a budget is the safe error."""
        if not ctx.attempts:
            return Amount()
        usage = ctx.result.usage
        model = ctx.result.response_model or ctx.served_model or ctx.model or ""
        quote = self.pricing.quote(model)
        ctx.price_known = quote.known
        if usage.known:
            tokens = TokenUsage(input=usage.input_tokens, output=usage.output_tokens,
                                cache_read=usage.cache_read_tokens,
                                cache_write=usage.cache_write_tokens - usage.cache_write_1h_tokens,
                                cache_write_1h=usage.cache_write_1h_tokens, web_searches=usage.web_searches,
                                file_searches=usage.file_searches)
            ctx.cost_usd = quote.cost(tokens)
            return Amount(usd=ctx.cost_usd, tokens=usage.total, calls=1)
        status = ctx.result.status
        if status is not None and status < 400:
            worst = hold.worst or self.worst_case(ctx)
            ctx.cost_usd = worst.usd
            return worst
        ctx.cost_usd = 0.0  # an error answer (or none): providers do not bill it; the call still counts
        return Amount(calls=1)

    async def _observe(self, ctx: RequestContext, result: SettleResult) -> None:
        if self.telemetry is not None:
            for spend in result.spends:
                lim = spend.limit
                if lim.scope == "session":
                    continue  # one series per session would be unbounded cardinality
                for unit in ("usd", "tokens"):
                    value = lim.value(unit)
                    if value is not None:
                        self.telemetry.set_budget_gauge(lim.scope, lim.scope_id, _window_label(lim.window), unit,
                                                        spend.spent.get(unit), value)
        if self.alerter is None:
            return
        for alert in await self.alerter.check(result):
            ctx.event("budget.alert", scope=alert.scope, id=alert.scope_id, window=alert.window.key,
                      unit=alert.unit, threshold=alert.threshold, utilisation=round(alert.utilisation, 4),
                      severity=alert.severity, summary=alert.summary())
            log.warning("budget alert: %s", alert.description())


def _window_label(window: Window) -> str:
    """The window as the config names it (day, month, hours_N), for metric labels and dashboards."""
    return f"hours_{window.hours_n}" if window.kind == "hours" else window.kind
