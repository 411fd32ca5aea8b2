"""Metric instruments and what one finished call records into them.

Label values are ids (key id, team id, model, tool name), never secrets; each unbounded label goes through a
`LabelLimiter` so a flood of new models or keys folds into `_OTHER` instead of exploding the series count.
Histograms carry the chat span's ids as exemplars, so an OTLP histogram bucket links to the trace behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otelgate.telemetry import semconv as sc
from otelgate.telemetry.aggregate import Key, LocalMetrics

if TYPE_CHECKING:
    from otelgate.config import TelemetryConfig
    from otelgate.context import RequestContext
    from otelgate.telemetry.setup import ExportStats

CircuitSource = Callable[[], Iterable[tuple[str, str | None, int]]]
InflightSource = Callable[[], "int | Iterable[tuple[str, int]]"]
_INPUT: Key = ((sc.GEN_AI_TOKEN_TYPE, sc.TOKEN_INPUT),)
_OUTPUT: Key = ((sc.GEN_AI_TOKEN_TYPE, sc.TOKEN_OUTPUT),)


_MAX_KEY_SETS = 4096


class _CallKeys:
    """The metric keys of one raw label set (provider, model, served model, upstream, key, team): models, routes and
    principals repeat from call to call, so the tuples are built once, not per call."""

    __slots__ = ("base", "cost", "input", "model", "output", "provider", "who")

    def __init__(self, provider: str, model: str, who: Key, base: Key, input: Key, output: Key, cost: Key) -> None:
        self.provider, self.model, self.who = provider, model, who
        self.base, self.input, self.output, self.cost = base, input, output, cost


class LabelLimiter:
    """First `limit` distinct values pass; later new ones become `_OTHER` (values already seen keep passing)."""

    __slots__ = ("_lock", "_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return ""
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return sc.OTHER


def timeout_kind(error_type: str | None) -> str | None:
    """`first_byte_timeout` -> `first_byte`, `timeout` -> `total`; None when the attempt did not time out."""
    if not error_type or not error_type.endswith("timeout"):
        return None
    kind = error_type[: -len("timeout")].rstrip("_")
    return kind or "total"


class Metrics:
    def __init__(self, meter: Meter, config: TelemetryConfig, stats: ExportStats, local: LocalMetrics) -> None:
        self.models = LabelLimiter(config.max_model_labels)
        self.keys = LabelLimiter(config.max_key_labels)
        self.teams = LabelLimiter(config.max_key_labels)
        self.tools = LabelLimiter(config.max_model_labels * 4)
        self.local = local
        self._stats = stats
        self._budgets: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        self._circuit_sources: list[CircuitSource] = []
        self._inflight_sources: list[InflightSource] = []
        self._call_key_sets: dict[tuple[Any, ...], _CallKeys] = {}
        self._who: dict[tuple[str, str | None] | None, Key] = {}

        # Per-call instruments aggregate locally (see aggregate.py: the SDK's per-measurement path cost ~10 µs
        # each); the gauges and the exporter counters are read at collection anyway and stay SDK observables.
        self.duration = local.histogram(sc.M_OPERATION_DURATION, sc.DURATION_BUCKETS)
        self.tokens = local.histogram(sc.M_TOKEN_USAGE, sc.TOKEN_BUCKETS)
        self.ttfc = local.histogram(sc.M_TIME_TO_FIRST_CHUNK, sc.DURATION_BUCKETS)
        self.tpoc = local.histogram(sc.M_TIME_PER_OUTPUT_CHUNK, sc.DURATION_BUCKETS)
        self.cost = local.counter(sc.M_COST)
        self.retries = local.counter(sc.M_RETRIES)
        self.responses = local.counter(sc.M_RESPONSES)
        self.timeouts = local.counter(sc.M_TIMEOUTS)
        self.fallbacks = local.counter(sc.M_FALLBACKS)
        self.rejected = local.counter(sc.M_REJECTED)
        self.detections = local.counter(sc.M_DETECTIONS)
        self.tool_calls = local.counter(sc.M_TOOL_CALLS)
        self.tool_duration = local.histogram(sc.M_TOOL_DURATION, sc.TOOL_DURATION_BUCKETS)
        self.sessions = local.counter(sc.M_SESSIONS)
        self.session_calls = local.histogram(sc.M_SESSION_CALLS, sc.SESSION_CALL_BUCKETS)

        for spec, callback in (
            (sc.M_BUDGET_UTILIZATION, self._observe_utilization),
            (sc.M_BUDGET_SPENT, self._observe_spent),
            (sc.M_BUDGET_LIMIT, self._observe_limit),
            (sc.M_CIRCUIT_STATE, self._observe_circuit),
            (sc.M_INFLIGHT, self._observe_inflight),
        ):
            name, unit, description = spec
            meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)
        for spec, callback in (
            (sc.M_EXPORT_FAILURES, self._observe_failures),
            (sc.M_DROPPED, self._observe_dropped),
        ):
            name, unit, description = spec
            meter.create_observable_counter(name, callbacks=[callback], unit=unit, description=description)

    # --- per call ------------------------------------------------------------------------------------------
    # Keys are (attribute, value) tuples built in one fixed order per metric (aggregate.py relies on it).
    def record_call(
        self,
        ctx: RequestContext,
        exemplar: tuple[int, int] | None,
        duration_s: float,
        error_type: str | None,
        ttfc_s: float | None,
        end_ns: int,
    ) -> None:
        attempts = ctx.attempts
        keys = self._call_keys(ctx)
        provider, model = keys.provider, keys.model
        with self.local.lock:
            if ctx.route.operation == sc.OP_CHAT:
                base = keys.base
                duration_key = (*base, (sc.ERROR_TYPE, error_type)) if error_type else base
                self.duration.record(duration_key, duration_s, end_ns, exemplar)
                usage = ctx.result.usage
                if usage.known:
                    self.tokens.record(keys.input, usage.total_input, end_ns, exemplar)
                    self.tokens.record(keys.output, usage.output_tokens, end_ns, exemplar)
                if ctx.stream and ttfc_s is not None:
                    self.ttfc.record(base, ttfc_s, end_ns, exemplar)
                    first = ctx.result.first_chunk_ns
                    if first is not None and ctx.result.chunks > 1 and end_ns > first:
                        self.tpoc.record(base, (end_ns - first) / 1e9 / (ctx.result.chunks - 1), end_ns, exemplar)
            if ctx.cost_usd:
                self.cost.add(keys.cost, ctx.cost_usd, end_ns)
            for attempt in attempts:
                where = ((sc.GEN_AI_PROVIDER_NAME, provider), (sc.SERVER_ADDRESS, attempt.server_address))
                if attempt.status is not None:
                    self.responses.add((*where, (sc.HTTP_RESPONSE_STATUS_CODE, attempt.status)), 1, end_ns)
                if attempt.retry_reason:
                    self.retries.add((*where, (sc.LABEL_REASON, attempt.retry_reason)), 1, end_ns)
                kind = timeout_kind(attempt.error_type)
                if kind:
                    self.timeouts.add((*where, (sc.LABEL_KIND, kind)), 1, end_ns)
            if ctx.fallback:
                self.fallbacks.add(
                    (
                        (sc.GEN_AI_PROVIDER_NAME, provider),
                        (sc.LABEL_FROM_MODEL, model),
                        (sc.LABEL_TO_MODEL, self.models(ctx.fallback)),
                    ),
                    1,
                    end_ns,
                )
            if ctx.outcome == "rejected":
                self.rejected.add((*keys.who, (sc.LABEL_REASON, ctx.rejected_reason or sc.OTHER)), 1, end_ns)
            for verdict in ctx.verdicts:
                self._record_verdict(verdict, end_ns)

    def _record_verdict(self, verdict: dict[str, Any], now_ns: int) -> None:
        rules = verdict.get("rules")
        if rules is None:
            rules = [verdict["rule"]] if verdict.get("rule") else []
        location = str(verdict.get("location") or "")
        action = str(verdict.get("action") or "")
        for rule in rules:
            name = rule.get("id") or rule.get("name") if isinstance(rule, dict) else rule
            key = ((sc.LABEL_RULE, str(name)), (sc.LABEL_LOCATION, location), (sc.LABEL_ACTION, action))
            self.detections.add(key, 1, now_ns)

    def record_tool(
        self, tool: str, outcome: str, duration_s: float | None, exemplar: tuple[int, int] | None, now_ns: int
    ) -> None:
        key = ((sc.GEN_AI_TOOL_NAME, self.tools(tool)), (sc.LABEL_OUTCOME, outcome))
        with self.local.lock:
            self.tool_calls.add(key, 1, now_ns)
            if duration_s is not None:
                self.tool_duration.record(key, duration_s, now_ns, exemplar)

    def record_session(self, new: bool, position: int, who: Key, exemplar: tuple[int, int] | None, now_ns: int) -> None:
        with self.local.lock:
            if new:
                self.sessions.add(who, 1, now_ns)
            self.session_calls.record(who, position, now_ns, exemplar)

    def who(self, ctx: RequestContext) -> Key:
        principal = ctx.principal
        raw = (principal.key_id, principal.team) if principal is not None else None
        who = self._who.get(raw)
        if who is None:
            who = (
                (sc.OTELGATE_KEY, self.keys(principal.key_id) if principal else ""),
                (sc.OTELGATE_TEAM, self.teams(principal.team) if principal and principal.team else ""),
            )
            self._who[raw] = who
            if len(self._who) > _MAX_KEY_SETS:
                self._who.clear()
        return who

    def _call_keys(self, ctx: RequestContext) -> _CallKeys:
        """The call's metric keys, built once per distinct raw label set and reused (see _CallKeys)."""
        principal = ctx.principal
        attempts = ctx.attempts
        last = attempts[-1] if attempts else None
        raw = (
            ctx.provider.name,
            ctx.model,
            ctx.result.response_model,
            last is not None,
            last.server_address if last is not None else None,
            last.server_port if last is not None else None,
            principal.key_id if principal is not None else None,
            principal.team if principal is not None else None,
            principal is not None,
            ctx.route.operation == sc.OP_CHAT,
        )
        keys = self._call_key_sets.get(raw)
        if keys is None:
            # Limiter calls in the order the keys were always built in: a value's label, once decided, is stable
            # (seen values keep passing; the set of seen values only grows), so reusing the keys changes nothing.
            provider = ctx.provider.name
            model = self.models(ctx.model)
            who = self.who(ctx)
            base: Key = ()
            if raw[-1]:  # chat: the GenAI client metrics' keys (the served model's label decided only here)
                base = (
                    (sc.GEN_AI_OPERATION_NAME, sc.OP_CHAT),
                    (sc.GEN_AI_PROVIDER_NAME, provider),
                    (sc.GEN_AI_REQUEST_MODEL, model),
                )
                if ctx.result.response_model:
                    base += ((sc.GEN_AI_RESPONSE_MODEL, self.models(ctx.result.response_model)),)
                if last is not None:
                    base += ((sc.SERVER_ADDRESS, last.server_address),)
                    if last.server_port is not None:
                        base += ((sc.SERVER_PORT, last.server_port),)
            cost = (*who, (sc.GEN_AI_REQUEST_MODEL, model), (sc.GEN_AI_PROVIDER_NAME, provider))
            keys = _CallKeys(provider, model, who, base, base + _INPUT, base + _OUTPUT, cost)
            if len(self._call_key_sets) >= _MAX_KEY_SETS:
                self._call_key_sets.clear()  # raw model names come from clients: bounded like any cache
            self._call_key_sets[raw] = keys
        return keys

    # --- gauges fed by other stages ---------------------------------------------------------------------------
    def set_budget(self, scope: str, id: str, window: str, unit: str, spent: float, limit: float) -> None:
        key = (scope, id, window, unit)
        if key not in self._budgets and len(self._budgets) >= 10 * self.keys.limit:
            return  # configured budgets are bounded; this guards against an id flood only
        self._budgets[key] = (float(spent), float(limit))

    def add_circuit_source(self, fn: CircuitSource) -> None:
        self._circuit_sources.append(fn)

    def add_inflight_source(self, fn: InflightSource) -> None:
        self._inflight_sources.append(fn)

    def _budget_attrs(self, key: tuple[str, str, str, str]) -> dict[str, str]:
        scope, id_, window, unit = key
        return {sc.LABEL_SCOPE: scope, sc.LABEL_ID: id_, sc.LABEL_WINDOW: window, sc.LABEL_UNIT: unit}

    def _observe_utilization(self, _: CallbackOptions) -> Iterator[Observation]:
        for key, (spent, limit) in list(self._budgets.items()):
            if limit > 0:
                yield Observation(spent / limit, self._budget_attrs(key))

    def _observe_spent(self, _: CallbackOptions) -> Iterator[Observation]:
        for key, (spent, _limit) in list(self._budgets.items()):
            yield Observation(spent, self._budget_attrs(key))

    def _observe_limit(self, _: CallbackOptions) -> Iterator[Observation]:
        for key, (_spent, limit) in list(self._budgets.items()):
            yield Observation(limit, self._budget_attrs(key))

    def _observe_circuit(self, _: CallbackOptions) -> Iterator[Observation]:
        for source in list(self._circuit_sources):
            try:
                rows = list(source())
            except Exception:
                continue  # a broken source must not break the scrape
            for address, model, state in rows:
                attributes = {sc.SERVER_ADDRESS: address}
                if model:
                    attributes[sc.GEN_AI_REQUEST_MODEL] = self.models(model)
                yield Observation(int(state), attributes)

    def _observe_inflight(self, _: CallbackOptions) -> Iterator[Observation]:
        for source in list(self._inflight_sources):
            try:
                value = source()
                if isinstance(value, int | float):
                    yield Observation(value, {})
                else:
                    for address, count in list(value):
                        yield Observation(count, {sc.SERVER_ADDRESS: address})
            except Exception:
                continue

    def _observe_failures(self, _: CallbackOptions) -> Iterator[Observation]:
        for signal, count in list(self._stats.failures.items()):
            yield Observation(count, {sc.LABEL_SIGNAL: signal})

    def _observe_dropped(self, _: CallbackOptions) -> Iterator[Observation]:
        for signal, count in list(self._stats.dropped.items()):
            yield Observation(count, {sc.LABEL_SIGNAL: signal})
