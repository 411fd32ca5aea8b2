"""Every telemetry name otelgate emits, in one place.

GenAI names come from the OpenTelemetry semantic conventions (v1.41.0, the `_incubating` modules of
opentelemetry-semantic-conventions); HTTP/server names from the stable ones; otelgate's own names are defined here.
Nothing else in otelgate spells a telemetry name inline: a rename is a one-line change here, and the Prometheus
names dashboards rely on follow mechanically (dots become underscores, `s` adds `_seconds`, counters add `_total`).
"""

from __future__ import annotations

from typing import Final

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _g
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as _gm
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    server_attributes,
    service_attributes,
    url_attributes,
)

# --- GenAI attributes (semconv) -------------------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = _g.GEN_AI_OPERATION_NAME
GEN_AI_PROVIDER_NAME: Final = _g.GEN_AI_PROVIDER_NAME
GEN_AI_REQUEST_MODEL: Final = _g.GEN_AI_REQUEST_MODEL
GEN_AI_REQUEST_MAX_TOKENS: Final = _g.GEN_AI_REQUEST_MAX_TOKENS
GEN_AI_REQUEST_STREAM: Final = _g.GEN_AI_REQUEST_STREAM
GEN_AI_RESPONSE_ID: Final = _g.GEN_AI_RESPONSE_ID
GEN_AI_RESPONSE_MODEL: Final = _g.GEN_AI_RESPONSE_MODEL
GEN_AI_RESPONSE_FINISH_REASONS: Final = _g.GEN_AI_RESPONSE_FINISH_REASONS
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = _g.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK
GEN_AI_USAGE_INPUT_TOKENS: Final = _g.GEN_AI_USAGE_INPUT_TOKENS
GEN_AI_USAGE_OUTPUT_TOKENS: Final = _g.GEN_AI_USAGE_OUTPUT_TOKENS
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = _g.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = _g.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
GEN_AI_CONVERSATION_ID: Final = _g.GEN_AI_CONVERSATION_ID
GEN_AI_TOKEN_TYPE: Final = _g.GEN_AI_TOKEN_TYPE
GEN_AI_TOOL_NAME: Final = _g.GEN_AI_TOOL_NAME
GEN_AI_TOOL_CALL_ID: Final = _g.GEN_AI_TOOL_CALL_ID
GEN_AI_TOOL_TYPE: Final = _g.GEN_AI_TOOL_TYPE
GEN_AI_INPUT_MESSAGES: Final = _g.GEN_AI_INPUT_MESSAGES
GEN_AI_OUTPUT_MESSAGES: Final = _g.GEN_AI_OUTPUT_MESSAGES
GEN_AI_SYSTEM_INSTRUCTIONS: Final = _g.GEN_AI_SYSTEM_INSTRUCTIONS

OP_CHAT: Final = _g.GenAiOperationNameValues.CHAT.value
OP_EXECUTE_TOOL: Final = _g.GenAiOperationNameValues.EXECUTE_TOOL.value
TOKEN_INPUT: Final = _g.GenAiTokenTypeValues.INPUT.value
TOKEN_OUTPUT: Final = _g.GenAiTokenTypeValues.OUTPUT.value
TOOL_TYPE_FUNCTION: Final = "function"

# --- HTTP, URL, server, error (stable semconv) ------------------------------------------------------------------
HTTP_REQUEST_METHOD: Final = http_attributes.HTTP_REQUEST_METHOD
HTTP_REQUEST_RESEND_COUNT: Final = http_attributes.HTTP_REQUEST_RESEND_COUNT
HTTP_RESPONSE_STATUS_CODE: Final = http_attributes.HTTP_RESPONSE_STATUS_CODE
HTTP_ROUTE: Final = http_attributes.HTTP_ROUTE
URL_FULL: Final = url_attributes.URL_FULL
URL_PATH: Final = url_attributes.URL_PATH
URL_SCHEME: Final = url_attributes.URL_SCHEME
SERVER_ADDRESS: Final = server_attributes.SERVER_ADDRESS
SERVER_PORT: Final = server_attributes.SERVER_PORT
CLIENT_ADDRESS: Final = client_attributes.CLIENT_ADDRESS
ERROR_TYPE: Final = error_attributes.ERROR_TYPE
ERROR_TYPE_OTHER: Final = error_attributes.ErrorTypeValues.OTHER.value
SERVICE_NAME: Final = service_attributes.SERVICE_NAME
SERVICE_VERSION: Final = service_attributes.SERVICE_VERSION
SERVICE_INSTANCE_ID: Final = "service.instance.id"

# --- otelgate attributes ----------------------------------------------------------------------------------------
OTELGATE_KEY: Final = "otelgate.key"
OTELGATE_TEAM: Final = "otelgate.team"
OTELGATE_COST_USD: Final = "otelgate.cost.usd"
OTELGATE_PRICE_KNOWN: Final = "otelgate.price.known"
OTELGATE_RETRIES: Final = "otelgate.retries"
OTELGATE_FALLBACK: Final = "otelgate.fallback"
OTELGATE_SCREENING_FLAGGED: Final = "otelgate.screening.flagged"
OTELGATE_REJECTED_REASON: Final = "otelgate.rejected.reason"
OTELGATE_OUTCOME: Final = "otelgate.outcome"
OTELGATE_SESSION_SOURCE: Final = "otelgate.session.source"
OTELGATE_REQUEST_ID: Final = "otelgate.request.id"
OTELGATE_RETRY_REASON: Final = "otelgate.retry.reason"
OTELGATE_BACKOFF_S: Final = "otelgate.retry.backoff_s"
OTELGATE_TOOL_OUTCOME: Final = "otelgate.tool.outcome"
OTELGATE_TOOL_EVIDENCE: Final = "otelgate.tool.evidence"  # how the execute_tool span was reconstructed
# Metric-only label names (Prometheus: reason, kind, rule, location, action, scope, id, window, unit, state, signal)
LABEL_REASON: Final = "reason"
LABEL_KIND: Final = "kind"
LABEL_RULE: Final = "rule"
LABEL_LOCATION: Final = "location"
LABEL_ACTION: Final = "action"
LABEL_SCOPE: Final = "scope"
LABEL_ID: Final = "id"
LABEL_WINDOW: Final = "window"
LABEL_UNIT: Final = "unit"
LABEL_OUTCOME: Final = "outcome"
LABEL_SIGNAL: Final = "signal"
LABEL_FROM_MODEL: Final = GEN_AI_REQUEST_MODEL
LABEL_TO_MODEL: Final = OTELGATE_FALLBACK

# Span events otelgate adds itself (events recorded by other stages keep their own names).
EVENT_TOOL_CALL_REQUESTED: Final = "otelgate.tool_call.requested"

# Label value when a bounded label set is full (semconv's own spelling for "something else").
OTHER: Final = "_OTHER"


# --- span names ---------------------------------------------------------------------------------------------------
def chat_span_name(model: str | None) -> str:
    return f"{OP_CHAT} {model}" if model else OP_CHAT


def tool_span_name(tool: str) -> str:
    return f"{OP_EXECUTE_TOOL} {tool}"


# --- metrics: (name, unit, description) ------------------------------------------------------------------------
# Units in braces are annotations (dimensionless): both otelgate's /metrics and the Collector's Prometheus
# exporter drop them, so `otelgate.cost.usd` stays `otelgate_cost_usd_total` and not `..._USD_total`.
M_OPERATION_DURATION: Final = (_gm.GEN_AI_CLIENT_OPERATION_DURATION, "s", "GenAI operation duration.")
M_TOKEN_USAGE: Final = (_gm.GEN_AI_CLIENT_TOKEN_USAGE, "{token}", "Number of input and output tokens used.")
M_TIME_TO_FIRST_CHUNK: Final = (
    _gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK,
    "s",
    "Time from the agent's request to the first content chunk of the streamed response.",
)
M_TIME_PER_OUTPUT_CHUNK: Final = (
    _gm.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK,
    "s",
    "Mean time between output chunks after the first one, per streamed response.",
)
M_COST: Final = ("otelgate.cost.usd", "{USD}", "Cost of LLM calls in US dollars, by key, team and model.")
M_RETRIES: Final = ("otelgate.upstream.retries", "{retry}", "Upstream attempts retried, by reason.")
M_RESPONSES: Final = ("otelgate.upstream.responses", "{response}", "Upstream HTTP responses, by status code.")
M_TIMEOUTS: Final = ("otelgate.upstream.timeouts", "{timeout}", "Upstream attempts that timed out, by kind.")
M_FALLBACKS: Final = ("otelgate.fallbacks", "{fallback}", "Calls served by a fallback model or upstream.")
M_REJECTED: Final = ("otelgate.requests.rejected", "{request}", "Requests refused by the gateway, by reason.")
M_DETECTIONS: Final = (
    "otelgate.screening.detections",
    "{detection}",
    "Screening rule matches, by rule, location and action.",
)
M_BUDGET_UTILIZATION: Final = ("otelgate.budget.utilization", "{ratio}", "Budget spent / limit (0..1+).")
M_BUDGET_SPENT: Final = ("otelgate.budget.spent", "{amount}", "Budget spent in the current window (see unit).")
M_BUDGET_LIMIT: Final = ("otelgate.budget.limit", "{amount}", "Budget limit of the window (see unit).")
M_TOOL_CALLS: Final = ("otelgate.tool.calls", "{call}", "Tool executions seen in conversations, by outcome.")
M_TOOL_DURATION: Final = (
    "otelgate.tool.duration",
    "s",
    "From the response that asked for a tool to the request that brought its result.",
)
M_CIRCUIT_STATE: Final = ("otelgate.circuit.state", "{state}", "Circuit breaker: 0 closed, 1 half-open, 2 open.")
M_INFLIGHT: Final = ("otelgate.inflight", "{request}", "Upstream requests in flight.")
M_SESSIONS: Final = ("otelgate.sessions", "{session}", "Sessions (agent conversations) first seen.")
M_SESSION_CALLS: Final = (
    "otelgate.session.calls",
    "{call}",
    "Position of each call within its session (1 = first call): the depth of agent loops.",
)
M_EXPORT_FAILURES: Final = (
    "otelgate.telemetry.export_failures",
    "{export}",
    "Telemetry export batches that failed, by signal.",
)
M_DROPPED: Final = ("otelgate.telemetry.dropped", "{item}", "Telemetry items dropped (queue full), by signal.")

# Explicit bucket boundaries from the GenAI metrics conventions.
DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
# Tools run from milliseconds (a lookup) to many minutes (a build, a human approval).
TOOL_DURATION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
SESSION_CALL_BUCKETS: Final = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233)

# --- environment variables ---------------------------------------------------------------------------------------
ENV_CAPTURE_CONTENT: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# --- logs ------------------------------------------------------------------------------------------------------
ACCESS_LOGGER: Final = "otelgate.access"
INSTRUMENTATION_SCOPE: Final = "otelgate"

# Signal names for the export failure / drop counters.
SIGNAL_TRACES: Final = "traces"
SIGNAL_METRICS: Final = "metrics"
SIGNAL_LOGS: Final = "logs"
