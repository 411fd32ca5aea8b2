"""Generate otelgate's Grafana dashboards (dashboards/json/*.json) from one description.

Writing the JSON by hand drifts: a label renamed in one panel and not the next, a datasource uid missing, two
dashboards with the same uid. Here every panel is a title, a kind and PromQL; layout, datasource references,
template variables and exemplar settings are derived the same way for all of them.

    python dashboards/generate.py              # rewrite dashboards/json/
    python dashboards/generate.py --out DIR    # write elsewhere (the tests compare the two)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
# Selector for the GenAI histograms (duration, tokens, time to first chunk): they carry the model, not the key or
# team (the semconv metrics keep their cardinality to model and provider).
M = 'gen_ai_request_model=~"$model"'
# Selector for otelgate's own metrics that carry model, key and team (cost).
F = M + ', otelgate_key=~"$key", otelgate_team=~"$team"'
# Same for metrics labelled by key and team only (rejections, sessions, calls per session).
KT = 'otelgate_key=~"$key", otelgate_team=~"$team"'
# One observation per chat call, labelled by key and team: the per-key request count.
CALLS = "otelgate_session_calls_count"
DUR = "gen_ai_client_operation_duration_seconds"
TTFC = "gen_ai_client_operation_time_to_first_chunk_seconds"
TPOC = "gen_ai_client_operation_time_per_output_chunk_seconds"
TOK = "gen_ai_client_token_usage"
BUDGET_BY = "scope, id, window, unit"


@dataclass
class Q:
    expr: str
    legend: str = ""
    exemplar: bool = False
    instant: bool = False


@dataclass
class Panel:
    title: str
    queries: list[Q]
    kind: str = "timeseries"  # timeseries | stat | bargauge | table | state-timeline
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    max: float | None = None
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)
    mappings: list[dict] = field(default_factory=list)


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    extra_vars: list[dict] = field(default_factory=list)


def q_ratio(num: str, den: str) -> str:
    return f"({num}) / ({den})"


def quantile(q: float, metric: str, by: str = "", sel: str = M) -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


def rate_sum(metric: str, by: str, sel: str = "") -> str:
    selector = f"{metric}{{{sel}}}" if sel else metric
    return f"sum by ({by}) (rate({selector}[{RI}]))"


def query_var(name: str, label: str, metric: str) -> dict:
    definition = f"label_values({metric}, {label})"
    return {
        "name": name,
        "label": name.capitalize(),
        "type": "query",
        "datasource": DS,
        "definition": definition,
        "query": {"query": definition, "refId": f"{name}-variable"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def base_vars() -> list[dict]:
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {"selected": True, "text": "Prometheus", "value": "prometheus"},
            "hide": 0,
        },
        query_var("model", "gen_ai_request_model", f"{DUR}_count"),
        query_var("key", "otelgate_key", CALLS),
        query_var("team", "otelgate_team", CALLS),
    ]


CIRCUIT_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "closed", "color": "green", "index": 0},
            "1": {"text": "half-open", "color": "yellow", "index": 1},
            "2": {"text": "open", "color": "red", "index": 2},
        },
    }
]


def overview() -> Dashboard:
    req = rate_sum(f"{DUR}_count", "gen_ai_request_model", M)
    errors_by_model = rate_sum(f"{DUR}_count", "gen_ai_request_model", M + ', error_type!=""')
    return Dashboard(
        "otelgate-overview",
        "otelgate / Overview",
        "Traffic, errors, latency, time to first token, tokens and cost through the gateway.",
        [
            Panel("Requests/s", [Q(f"sum(rate({DUR}_count{{{M}}}[{RI}]))")], "stat", "reqps", width=6, height=4),
            Panel(
                "Error ratio",
                [Q(q_ratio(f'sum(rate({DUR}_count{{{M}, error_type!=""}}[{RI}]))',
                           f"sum(rate({DUR}_count{{{M}}}[{RI}]))"))],
                "stat", "percentunit", width=6, height=4,
                thresholds=[(None, "green"), (0.01, "yellow"), (0.05, "red")],
            ),
            Panel("p95 latency", [Q(quantile(0.95, DUR))], "stat", "s", width=6, height=4),
            Panel("Cost per hour", [Q(f"sum(rate(otelgate_cost_usd_total{{{F}}}[{RI}])) * 3600")],
                  "stat", "currencyUSD", width=6, height=4),
            Panel("Requests/s by model", [Q(req, "{{gen_ai_request_model}}")], unit="reqps"),
            Panel("Requests/s by provider",
                  [Q(rate_sum(f"{DUR}_count", "gen_ai_provider_name", M), "{{gen_ai_provider_name}}")],
                  unit="reqps"),
            Panel("Requests/s by key", [Q(rate_sum(CALLS, "otelgate_key", KT), "{{otelgate_key}}")],
                  unit="reqps", description="Chat calls per key, refused ones included (otelgate_session_calls "
                                            "counts every call once; the GenAI histograms carry no key)."),
            Panel("Error ratio by model", [Q(q_ratio(errors_by_model, req), "{{gen_ai_request_model}}")],
                  unit="percentunit"),
            Panel(
                "Latency p50 / p95 / p99",
                [Q(quantile(p, DUR), f"p{int(p * 100)}", exemplar=True) for p in (0.5, 0.95, 0.99)],
                unit="s",
                description="Whole logical call, retries included. Exemplar dots link to the trace in Tempo.",
            ),
            Panel("p95 latency by model",
                  [Q(quantile(0.95, DUR, "gen_ai_request_model"), "{{gen_ai_request_model}}", exemplar=True)],
                  unit="s"),
            Panel(
                "Time to first token p50 / p95 by model",
                [Q(quantile(0.5, TTFC, "gen_ai_request_model"), "p50 {{gen_ai_request_model}}", exemplar=True),
                 Q(quantile(0.95, TTFC, "gen_ai_request_model"), "p95 {{gen_ai_request_model}}", exemplar=True)],
                unit="s",
            ),
            Panel("Time per output chunk p95 by model",
                  [Q(quantile(0.95, TPOC, "gen_ai_request_model"), "{{gen_ai_request_model}}", exemplar=True)],
                  unit="s"),
            Panel("Tokens/s by model and type",
                  [Q(rate_sum(f"{TOK}_sum", "gen_ai_request_model, gen_ai_token_type", M),
                     "{{gen_ai_request_model}} {{gen_ai_token_type}}")], width=24),
            Panel("Cost per hour by model",
                  [Q(f"{rate_sum('otelgate_cost_usd_total', 'gen_ai_request_model', F)} * 3600",
                     "{{gen_ai_request_model}}")], unit="currencyUSD"),
            Panel("Cost per hour by provider",
                  [Q(f"{rate_sum('otelgate_cost_usd_total', 'gen_ai_provider_name', F)} * 3600",
                     "{{gen_ai_provider_name}}")], unit="currencyUSD"),
            Panel("Cost per hour by key",
                  [Q(f"{rate_sum('otelgate_cost_usd_total', 'otelgate_key', F)} * 3600", "{{otelgate_key}}")],
                  unit="currencyUSD", width=24),
        ],
    )


def budget_sel(scope: str) -> str:
    ids = {"key": "$key", "team": "$team", "global": ".*"}[scope]
    return f'scope="{scope}", id=~"{ids}"'


def cost_and_budgets() -> Dashboard:
    panels: list[Panel] = []
    for scope in ("key", "team", "global"):
        sel = budget_sel(scope)
        panels.append(Panel(
            f"Budget utilisation — {scope}",
            [Q(f"max by ({BUDGET_BY}) (otelgate_budget_utilization{{{sel}}})", "{{id}} {{window}} {{unit}}",
               instant=True)],
            "bargauge", "percentunit", width=8, max=1,
            thresholds=[(None, "green"), (0.8, "orange"), (1, "red")],
        ))
    for scope in ("key", "team"):
        sel = budget_sel(scope)
        panels.append(Panel(
            f"Spend against limit — {scope}",
            [Q(f"max by ({BUDGET_BY}) (otelgate_budget_spent{{{sel}}})", "{{id}} {{window}} {{unit}} spent"),
             Q(f"max by ({BUDGET_BY}) (otelgate_budget_limit{{{sel}}})", "{{id}} {{window}} {{unit}} limit")],
            description="Spent so far in the current window (resets at the window boundary) and the limit.",
        ))
    for scope, label in (("key", "otelgate_key"), ("team", "otelgate_team")):
        panels.append(Panel(
            f"Burn rate per {scope} (USD/hour)",
            [Q(f"{rate_sum('otelgate_cost_usd_total', label, F)} * 3600", f"{{{{{label}}}}}")],
            unit="currencyUSD",
        ))
    for scope in ("key", "team"):
        sel = budget_sel(scope)
        remaining = f"max by ({BUDGET_BY}) (1 - otelgate_budget_utilization{{{sel}}})"
        slope = f"max by ({BUDGET_BY}) (deriv(otelgate_budget_utilization{{{sel}}}[1h])) > 0"
        panels.append(Panel(
            f"Forecast time to exhaustion — {scope}",
            [Q(f"({remaining}) / ({slope})", "{{id}} {{window}} {{unit}}", instant=True)],
            "bargauge", "s",
            description="Remaining share of each budget divided by its growth rate over the last hour. "
                        "Only budgets that are growing are listed; a window resetting first makes it moot.",
            thresholds=[(None, "red"), (6 * 3600, "orange"), (24 * 3600, "green")],
        ))
    panels += [
        Panel("Cost over the range by model",
              [Q(f"sum by (gen_ai_request_model) (increase(otelgate_cost_usd_total{{{F}}}[$__range]))",
                 "{{gen_ai_request_model}}", instant=True)], "bargauge", "currencyUSD"),
        Panel("Budget and session refusals/s by key",
              [Q(rate_sum("otelgate_requests_rejected_total", "otelgate_key, reason",
                          KT + ', reason=~"budget|session_limit"'), "{{otelgate_key}} {{reason}}")],
              unit="reqps"),
    ]
    return Dashboard("otelgate-cost", "otelgate / Cost & budgets",
                     "Spend against limits per key, team and window; burn rate and time left.", panels)


def reliability() -> Dashboard:
    up_sel = 'job="otelgate"'
    return Dashboard(
        "otelgate-reliability",
        "otelgate / Reliability",
        "Retries, upstream status codes, timeouts, circuit breakers, fallbacks, refusals and load.",
        [
            Panel("Proxy instances up", [Q(f"up{{{up_sel}}}", "{{instance}}")], "state-timeline",
                  mappings=[{"type": "value", "options": {"0": {"text": "down", "color": "red", "index": 0},
                                                          "1": {"text": "up", "color": "green", "index": 1}}}],
                  width=24, height=5),
            Panel("Retries/s by reason",
                  [Q(rate_sum("otelgate_upstream_retries_total", "reason"), "{{reason}}")], unit="reqps"),
            Panel("Upstream responses/s by status code",
                  [Q(rate_sum("otelgate_upstream_responses_total", "gen_ai_provider_name, http_response_status_code"),
                     "{{gen_ai_provider_name}} {{http_response_status_code}}")], unit="reqps"),
            Panel("Timeouts/s by kind",
                  [Q(rate_sum("otelgate_upstream_timeouts_total", "kind"), "{{kind}}")], unit="reqps"),
            Panel("Retries per call",
                  [Q(q_ratio(f"sum(rate(otelgate_upstream_retries_total[{RI}]))",
                             f"sum(rate({DUR}_count[{RI}]))"), "retries per call")]),
            Panel("Circuit state",
                  [Q('max by (server_address, gen_ai_request_model) '
                     '(otelgate_circuit_state{gen_ai_request_model=~"$model"})',
                     "{{server_address}} {{gen_ai_request_model}}")],
                  "state-timeline", mappings=CIRCUIT_MAPPINGS),
            Panel("Fallbacks/s",
                  [Q(rate_sum("otelgate_fallbacks_total", "gen_ai_request_model, otelgate_fallback"),
                     "{{gen_ai_request_model}} → {{otelgate_fallback}}")],
                  unit="reqps"),
            Panel("Refusals/s by reason",
                  [Q(rate_sum("otelgate_requests_rejected_total", "reason", KT), "{{reason}}")], unit="reqps"),
            Panel("Failed calls/s by error type",
                  [Q(rate_sum(f"{DUR}_count", "error_type", M + ', error_type!=""'), "{{error_type}}")],
                  unit="reqps"),
            Panel("In-flight calls by upstream",
                  [Q("sum by (server_address) (otelgate_inflight)", "{{server_address}}")]),
            Panel("Telemetry export failures/s and dropped items/s",
                  [Q(rate_sum("otelgate_telemetry_export_failures_total", "signal"), "failures {{signal}}"),
                   Q(f"sum(rate(otelgate_telemetry_dropped_total[{RI}]))", "dropped")]),
        ],
    )


def security() -> Dashboard:
    det = "otelgate_screening_detections_total"
    return Dashboard(
        "otelgate-security",
        "otelgate / Security",
        "Prompt-injection detections, blocked requests and tool-permission refusals.",
        [
            Panel("Detections over the range",
                  [Q(f"sum(increase({det}[$__range]))", instant=True)], "stat", width=8, height=4),
            Panel("Blocked by screening over the range",
                  [Q(f'sum(increase(otelgate_requests_rejected_total{{{KT}, reason="screening"}}[$__range]))',
                     instant=True)], "stat", width=8, height=4),
            Panel("Tool-permission refusals over the range",
                  [Q(f'sum(increase(otelgate_requests_rejected_total{{{KT}, reason="tool_permission"}}'
                     "[$__range]))", instant=True)], "stat", width=8, height=4),
            Panel("Detections/s by rule", [Q(rate_sum(det, "rule"), "{{rule}}")], unit="reqps"),
            Panel("Detections/s by location", [Q(rate_sum(det, "location"), "{{location}}")], unit="reqps"),
            Panel("Detections/s by action", [Q(rate_sum(det, "action"), "{{action}}")], unit="reqps"),
            Panel("Blocked requests/s by key",
                  [Q(rate_sum("otelgate_requests_rejected_total", "otelgate_key", KT + ', reason="screening"'),
                     "{{otelgate_key}}")], unit="reqps"),
            Panel("Tool-permission refusals/s by key",
                  [Q(rate_sum("otelgate_requests_rejected_total", "otelgate_key",
                              KT + ', reason="tool_permission"'), "{{otelgate_key}}")], unit="reqps"),
            Panel("Authentication refusals/s",
                  [Q(f'sum(rate(otelgate_requests_rejected_total{{reason="auth"}}[{RI}]))', "auth")],
                  unit="reqps"),
            Panel("Top rules over the range",
                  [Q(f"topk(10, sum by (rule, location, action) (increase({det}[$__range])))",
                     "{{rule}} {{location}} {{action}}", instant=True)], "bargauge", width=24),
        ],
    )


def agents() -> Dashboard:
    tsel = 'gen_ai_tool_name=~"$tool"'
    calls = "otelgate_tool_calls_total"
    return Dashboard(
        "otelgate-agents",
        "otelgate / Agents & tools",
        "Tool calls seen in agent conversations, their errors and durations; sessions and calls per session.",
        [
            Panel("Tool calls/s by tool", [Q(rate_sum(calls, "gen_ai_tool_name", tsel), "{{gen_ai_tool_name}}")],
                  unit="reqps"),
            Panel("Tool error ratio by tool",
                  [Q(q_ratio(rate_sum(calls, "gen_ai_tool_name", tsel + ', outcome="error"'),
                             rate_sum(calls, "gen_ai_tool_name", tsel)), "{{gen_ai_tool_name}}")],
                  unit="percentunit"),
            Panel("Tool duration p50 / p95 by tool",
                  [Q(quantile(0.5, "otelgate_tool_duration_seconds", "gen_ai_tool_name", tsel),
                     "p50 {{gen_ai_tool_name}}", exemplar=True),
                   Q(quantile(0.95, "otelgate_tool_duration_seconds", "gen_ai_tool_name", tsel),
                     "p95 {{gen_ai_tool_name}}", exemplar=True)],
                  unit="s",
                  description="From the response that asked for the tool to the request that brought its result."),
            Panel("Sessions started/s", [Q(f"sum(rate(otelgate_sessions_total{{{KT}}}[{RI}]))", "sessions")],
                  unit="reqps"),
            Panel("Calls per session p50 / p95",
                  [Q(quantile(0.5, "otelgate_session_calls", "", KT), "p50"),
                   Q(quantile(0.95, "otelgate_session_calls", "", KT), "p95")]),
            Panel("Mean calls per session",
                  [Q(q_ratio(f"sum(rate(otelgate_session_calls_sum{{{KT}}}[{RI}]))",
                             f"sum(rate(otelgate_session_calls_count{{{KT}}}[{RI}]))"), "mean")]),
            Panel("Session-limit refusals/s by key",
                  [Q(rate_sum("otelgate_requests_rejected_total", "otelgate_key", KT + ', reason="session_limit"'),
                     "{{otelgate_key}}")], unit="reqps"),
            Panel("Tool calls over the range",
                  [Q(f"sum by (gen_ai_tool_name, outcome) (increase({calls}{{{tsel}}}[$__range]))",
                     "{{gen_ai_tool_name}} {{outcome}}", instant=True)], "bargauge"),
        ],
        extra_vars=[query_var("tool", "gen_ai_tool_name", calls)],
    )


def render_panel(p: Panel, pid: int, x: int, y: int) -> dict:
    targets = []
    for i, q in enumerate(p.queries):
        t: dict = {"refId": chr(ord("A") + i), "datasource": DS, "expr": q.expr, "legendFormat": q.legend,
                   "range": not q.instant, "instant": q.instant}
        if q.exemplar:
            t["exemplar"] = True
        targets.append(t)
    defaults: dict = {"unit": p.unit}
    if p.max is not None:
        defaults["min"] = 0
        defaults["max"] = p.max
    if p.thresholds:
        defaults["thresholds"] = {"mode": "absolute",
                                  "steps": [{"value": v, "color": c} for v, c in p.thresholds]}
    if p.mappings:
        defaults["mappings"] = p.mappings
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def render(d: Dashboard) -> dict:
    panels, x, y, row_h = [], 0, 0, 0
    for pid, p in enumerate(d.panels, start=1):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(render_panel(p, pid, x, y))
        x += p.width
        row_h = max(row_h, p.height)
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["otelgate"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "links": [{"type": "dashboards", "tags": ["otelgate"], "asDropdown": True, "title": "otelgate",
                   "includeVars": True, "keepTime": True}],
        "templating": {"list": base_vars() + d.extra_vars},
        "annotations": {"list": []},
        "panels": panels,
    }


DASHBOARDS = (overview, cost_and_budgets, reliability, security, agents)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for build in DASHBOARDS:
        d = render(build())
        path = args.out / f"{d['uid']}.json"
        path.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(path)


if __name__ == "__main__":
    main()
