"""otelgate.sim — a simulated Anthropic / OpenAI upstream that real SDKs can talk to.

It speaks the Anthropic Messages API (``POST /v1/messages`` streaming and not, ``POST /v1/messages/count_tokens``,
``GET /v1/models`` when the request carries ``anthropic-version``) and the OpenAI Chat Completions and Responses APIs
(``POST /v1/chat/completions``, ``POST /v1/responses``, ``GET /v1/models``) closely enough that the official
``anthropic`` and ``openai`` Python SDKs parse every answer, stream and error. It is the only simulated part of
otelgate: the proxy's tests, ``otelgate demo``, the eval runner and the benchmarks point their upstream at it.

Usage::

    async with SimUpstream(port=0, chunks=5) as sim:       # port 0 = a free port
        sim.script([{"tool_call": {"name": "search", "input": {"q": "x"}}}, {"text": "Done."}])
        client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="k")
        openai_client = openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="k")
        sim.requests            # list[SimRequest] (.method .path .route .headers .body .json() .queue .time .step)
        sim.requests_for("a")   # only those drawn from queue "a";  sim.remaining("a") -> steps left;  sim.reset()

    with SimUpstream.in_thread(port=0) as sim:             # the same sim on a background thread, for sync code
        ...

    python -m otelgate.sim --host 127.0.0.1 --port 8790 [--chunks N] [--latency-ms M] [--script steps.yaml]
    # standalone; prints its base URL alone on the first stdout line (use --port 0 for a free port)

Without a script every request gets a short deterministic answer echoing the start of the last user message,
``stop_reason: end_turn`` / ``finish_reason: stop``. Usage is deterministic: input tokens = characters of the
prompt JSON (system/instructions, messages/input, tools) / 4; output tokens = words of text + characters of tool
input JSON / 4. A text answer longer (in words) than the request's max_tokens is cut there with ``max_tokens``.

Steps
-----
A script is an ordered list of steps; each generating request (messages, chat completions, responses — not
``count_tokens`` or ``models``) consumes one. A step is a plain mapping, the same in Python, JSON and YAML
(the eval runner's ``llm:`` lists carry exactly these). Unknown keys are an error naming the step.

Answer steps::

    {}                                            # the default answer
    {"text": "Paris is the capital."}
    {"text": "...", "usage": {"input_tokens": 10, "output_tokens": 5,
                              "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0},
     "stop_reason": "end_turn", "chunks": 8, "delay": 0.2, "model": "other-model",
     "headers": {"x-extra": "1"}}
    {"tool_call": {"name": "search", "input": {"q": "x"}, "id": "toolu_opt"}}
    {"text": "Let me look.", "tool_calls": [{"name": "a", "input": {}}, {"name": "b", "input": {"n": 1}}]}

``tool_call(s)`` become Anthropic ``tool_use`` blocks (stop_reason ``tool_use``), OpenAI ``tool_calls``
(finish_reason ``tool_calls``) and Responses ``function_call`` items; ``id`` is optional. ``stop_reason`` takes the
Anthropic vocabulary (``end_turn``, ``max_tokens``, ``tool_use``, ``stop_sequence``, ``refusal``, …; OpenAI's
``stop``/``length``/``tool_calls``/``content_filter`` are accepted as aliases) and is mapped per API. ``usage`` is in
Anthropic terms; OpenAI sees ``prompt_tokens = input + cache_read + cache_creation``, ``cached_tokens = cache_read``.
``cache_creation_1h_input_tokens`` says how many of the written tokens were for one hour (Anthropic's
``usage.cache_creation`` split; the rest are five-minute writes). ``web_search_requests`` becomes Anthropic's
``usage.server_tool_use`` and, on the Responses API, that many ``web_search_call`` output items;
``file_search_requests`` that many ``file_search_call`` items (Responses only).
``chunks`` is the number of text deltas a streamed text is split into; ``delay`` is seconds before the headers.

Error steps (answered in the provider's own error shape, with the given headers)::

    {"status": 529, "headers": {"retry-after": "1"}, "message": "Overloaded"}
    {"status": 429, "headers": {"retry-after-ms": "200", "x-should-retry": "true"}, "type": "rate_limit_error",
     "code": "rate_limit_exceeded"}      # type/code override the defaults for the status

Anthropic types by status: 400 invalid_request_error, 401 authentication_error, 403 permission_error,
404 not_found_error, 429 rate_limit_error, 500 api_error, 529 overloaded_error. OpenAI: ``{"error": {"message",
"type", "param", "code"}}``.

Fault steps (``{"fault": NAME, ...}``; they also take the answer keys, shaping what is sent around the fault)::

    reset_before_headers                 close the connection with a TCP RST, no response at all
    stall_before_headers  seconds        wait, then answer normally
    stall_mid_stream      after_events seconds   send n events, pause, then finish the stream
    reset_mid_stream      after_events   send n events, then RST the connection
    slow_drip             interval       pause this many seconds between events
    malformed_sse         after_events   after n events emit a non-SSE line and a data line of invalid JSON,
                                         then carry on
    truncated_json        mode: cut|invalid   non-streaming: ``cut`` (default) announces the full
                                         Content-Length, sends half the body and closes; ``invalid`` sends a
                                         complete response whose body is half a JSON document. Streaming: sends
                                         half of event n (after_events) and closes the connection.
    end_stream_early      after_events   end the stream cleanly (proper chunked end) after n events, without
                                         message_stop / [DONE] / response.completed
    error_mid_stream      after_events message type   after n events send the provider's in-stream error event
                                         (Anthropic ``event: error``, OpenAI ``data: {"error": …}``, Responses
                                         ``event: error``) and end the stream

``after_events`` counts SSE events (Anthropic ``ping`` included) and defaults to half the stream. On a
non-streaming request a mid-stream fault acts on the body: headers with a Content-Length go out first, then
``stall_mid_stream`` pauses, ``reset_mid_stream`` sends half and resets, ``slow_drip`` sends the body in pieces,
``malformed_sse`` sends invalid JSON, ``end_stream_early`` sends half and closes, ``error_mid_stream`` answers 500.

Where steps come from (first match wins)
----------------------------------------
1. ``x-sim-fault: <json step>`` request header: applies to every request carrying it (any endpoint).
2. ``x-sim-sequence: <json list of steps>`` with ``x-sim-id: <anything>``: the sim counts requests per id and
   applies step n (the last repeats), e.g. ``[{"status": 529}, {"status": 529}, {}]`` = fail twice, then answer.
   Stateless for the caller, so a test can ask this of one logical request that a proxy retries.
3. A named queue: the URL prefix ``/_sim/q/{name}`` (Anthropic base URL ``http://host:port/_sim/q/{name}``,
   OpenAI ``…/_sim/q/{name}/v1``), else the ``x-sim-script: {name}`` header, else ``default``.
   Filled by ``sim.script(steps, name=...)`` or ``POST /_sim/script {"name": ..., "steps": [...]}``.
4. Otherwise the default answer.

Control API: ``POST /_sim/script``, ``POST /_sim/reset`` (queues, counters, recorded requests),
``GET /_sim/requests[?queue=name]`` (JSON list of what was received), ``GET /_sim/health``.
"""

from .answers import Usage
from .scripts import DEFAULT_QUEUE
from .server import SimRequest, SimUpstream, ThreadedSim
from .steps import FAULTS, ScriptError, Step, ToolCall, load_steps, parse_step, parse_steps

__all__ = [
    "DEFAULT_QUEUE",
    "FAULTS",
    "ScriptError",
    "SimRequest",
    "SimUpstream",
    "Step",
    "ThreadedSim",
    "ToolCall",
    "Usage",
    "load_steps",
    "parse_step",
    "parse_steps",
]
