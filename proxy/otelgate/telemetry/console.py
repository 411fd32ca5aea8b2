"""A terminal view of finished spans (for `otelgate demo`): one tree per trace, with what matters per span."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otelgate.telemetry import semconv as sc


def _details(span: ReadableSpan) -> str:
    a = span.attributes or {}
    bits: list[str] = []
    if sc.HTTP_RESPONSE_STATUS_CODE in a:
        bits.append(f"status={a[sc.HTTP_RESPONSE_STATUS_CODE]}")
    if sc.HTTP_REQUEST_RESEND_COUNT in a:
        bits.append(f"resend={a[sc.HTTP_REQUEST_RESEND_COUNT]}")
    if sc.OTELGATE_RETRY_REASON in a:
        bits.append(f"retry={a[sc.OTELGATE_RETRY_REASON]}")
    if sc.GEN_AI_USAGE_INPUT_TOKENS in a:
        bits.append(f"tokens={a[sc.GEN_AI_USAGE_INPUT_TOKENS]}→{a.get(sc.GEN_AI_USAGE_OUTPUT_TOKENS, 0)}")
    if sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK in a:
        bits.append(f"ttft={float(a[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]) * 1000:.0f}ms")
    if a.get(sc.OTELGATE_COST_USD):
        bits.append(f"cost=${float(a[sc.OTELGATE_COST_USD]):.4f}")
    if a.get(sc.GEN_AI_RESPONSE_FINISH_REASONS):
        bits.append(f"finish={','.join(a[sc.GEN_AI_RESPONSE_FINISH_REASONS])}")
    if a.get(sc.OTELGATE_FALLBACK):
        bits.append(f"fallback={a[sc.OTELGATE_FALLBACK]}")
    if a.get(sc.OTELGATE_REJECTED_REASON):
        bits.append(f"rejected={a[sc.OTELGATE_REJECTED_REASON]}")
    if a.get(sc.OTELGATE_SCREENING_FLAGGED):
        bits.append("screening=flagged")
    if sc.ERROR_TYPE in a:
        bits.append(f"error={a[sc.ERROR_TYPE]}")
    elif span.status.status_code is StatusCode.ERROR:
        bits.append("error")
    return "  ".join(bits)


def _duration_ms(span: ReadableSpan) -> float:
    if span.start_time is None or span.end_time is None:
        return 0.0
    return (span.end_time - span.start_time) / 1e6


def render_trace_tree(spans: Iterable[ReadableSpan]) -> str:
    """Text tree of the given spans, grouped by trace, children in start order."""
    spans = sorted(spans, key=lambda s: s.start_time or 0)
    ids = {s.context.span_id for s in spans if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        children[parent].append(span)
    lines: list[str] = []

    def walk(span: ReadableSpan, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└─ " if last else "├─ ")
        details = _details(span)
        lines.append(f"{prefix}{branch}{span.name}  {_duration_ms(span):.1f} ms" + (f"  {details}" if details else ""))
        kids = children.get(span.context.span_id, []) if span.context is not None else []
        extension = "" if root else ("   " if last else "│  ")
        for index, child in enumerate(kids):
            walk(child, prefix + extension, index == len(kids) - 1, False)

    roots = children.get(None, [])
    current_trace: int | None = None
    for root in roots:
        trace_id = root.context.trace_id if root.context is not None else 0
        if trace_id != current_trace:
            if lines:
                lines.append("")
            lines.append(f"trace {trace_id:032x}")
            current_trace = trace_id
        walk(root, "", True, True)
    return "\n".join(lines)
