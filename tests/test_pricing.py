"""Pricing table look-ups and costs; the input-token estimate of real request bodies."""

from __future__ import annotations

import json
import time

import pytest

from otelgate.budgets import Pricing, TokenUsage, estimate_input_tokens, requested_max_output_tokens
from otelgate.budgets.pricing import TABLE_PATH

M = 1_000_000


def test_table_is_dated_and_sourced() -> None:
    doc = json.loads(TABLE_PATH.read_text())
    assert doc["as_of"] == "2026-11-26"
    assert doc["sources"]["anthropic"] and doc["sources"]["openai"]
    for mid, p in doc["models"].items():
        assert p["input"] > 0 and p["output"] >= p["input"], mid
        assert 0 < p["cache_read"] <= p["input"] <= p["cache_write"], mid


@pytest.mark.parametrize(("model", "matched"), [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("claude-opus-4-0", "claude-opus-4-0"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    ("anthropic/claude-opus-5-5", "claude-opus-5-5"),
    ("claude-haiku-5-5[1m]", "claude-haiku-5-5"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-5.5", "gpt-5.5"),
    ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
    ("o3-mini-2025-01-31", "o3-mini"),
    ("o4-mini", "o4-mini"),
])
def test_model_matching(model: str, matched: str) -> None:
    q = Pricing().quote(model)
    assert q.known and q.matched == matched


def test_unknown_model_costs_the_default_and_is_flagged() -> None:
    p = Pricing(default={"input": 1.0, "output": 2.0})
    q = p.quote("llama-4-maverick")
    assert not q.known and q.matched is None
    assert p.cost("llama-4-maverick", TokenUsage(input=M, output=M)) == pytest.approx(3.0)


def test_costs_per_token_kind() -> None:
    p = Pricing()
    u = TokenUsage(input=M, output=M, cache_read=M, cache_write=M, cache_write_1h=M)
    assert p.cost("claude-opus-5-5", u) == pytest.approx(4 + 20 + 0.20 + 5 + 8)
    assert p.cost("claude-sonnet-4-5-20250929", TokenUsage(input=1000, output=500)) == pytest.approx(0.0105)
    assert p.cost("gpt-4o", TokenUsage(input=M, cache_read=M, output=M)) == pytest.approx(2.5 + 1.25 + 10)


def test_long_context_tier_prices_the_whole_call() -> None:
    p = Pricing()
    short = p.cost("claude-sonnet-4-5", TokenUsage(input=200_000, output=1000))
    long = p.cost("claude-sonnet-4-5", TokenUsage(input=200_001, output=1000))
    assert short == pytest.approx((200_000 * 3 + 1000 * 15) / M)
    assert long == pytest.approx((200_001 * 6 + 1000 * 22.5) / M)


def test_overrides_from_config() -> None:
    p = Pricing(overrides={"my-model": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75},
                           "gpt-4o": {"input": 1.0, "output": 1.0}})
    assert p.quote("my-model-2025-01-01").matched == "my-model"
    assert p.cost("my-model", TokenUsage(cache_write=M)) == pytest.approx(3.75)
    assert p.cost("gpt-4o-2024-08-06", TokenUsage(input=M, output=M)) == pytest.approx(2.0)


def test_worst_case_covers_any_split_of_the_estimated_input() -> None:
    p = Pricing()
    worst = p.worst_case("claude-sonnet-5-5", 10_000, 2_000)
    for u in (TokenUsage(input=10_000, output=2_000), TokenUsage(cache_write=10_000, output=2_000),
              TokenUsage(cache_write_1h=10_000, output=2_000), TokenUsage(cache_read=10_000, output=2_000)):
        assert p.cost("claude-sonnet-5-5", u) <= worst + 1e-12


# -- token estimate ---------------------------------------------------------------------------------------
PROSE = ("The quick brown fox jumps over the lazy dog while the budget ledger keeps every request "
         "honest about what it may spend. ") * 40


def test_estimate_is_a_slight_overestimate_of_prose() -> None:
    body = {"model": "claude-sonnet-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": PROSE}]}
    est = estimate_input_tokens(body)
    assert len(PROSE) / 4 < est < len(PROSE) / 3  # chars/4-ish, rounded up on purpose


def test_estimate_anthropic_body_parts() -> None:
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 400_000}}
    with_img = {**base, "messages": [{"role": "user", "content": [img, {"type": "text", "text": "hi"}]}]}
    assert 1600 <= estimate_input_tokens(with_img) - estimate_input_tokens(base) < 1700  # fixed, not the base64
    tool = {"name": "search", "description": "Search the web for a query.",
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}
    assert estimate_input_tokens({**base, "tools": [tool]}) - estimate_input_tokens(base) > 350
    system = {**base, "system": [{"type": "text", "text": PROSE, "cache_control": {"type": "ephemeral"}}]}
    assert estimate_input_tokens(system) > len(PROSE) / 4
    convo = {**base, "messages": [
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search",
                                           "input": {"query": PROSE}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": PROSE}]}]}
    assert estimate_input_tokens(convo) > 2 * len(PROSE) / 4


def test_estimate_openai_chat_and_responses() -> None:
    chat = {"model": "gpt-5.5", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": PROSE},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "f", "arguments": json.dumps({"q": PROSE})}}]},
        {"role": "tool", "tool_call_id": "c", "content": PROSE}]}
    est = estimate_input_tokens(chat)
    assert 3 * len(PROSE) / 4 < est < 3 * len(PROSE) / 3 + 200
    responses = {"model": "gpt-5.5", "instructions": "Be brief.", "input": PROSE}
    assert len(PROSE) / 4 < estimate_input_tokens(responses) < len(PROSE) / 3 + 20
    assert requested_max_output_tokens({"max_completion_tokens": 77}) == 77
    assert requested_max_output_tokens({"max_output_tokens": 55}) == 55
    assert requested_max_output_tokens({}, default=1234) == 1234


def test_estimate_counts_non_ascii_text_more_densely() -> None:
    cjk = "预算账本记录每一个请求的花费。" * 100
    est = estimate_input_tokens({"messages": [{"role": "user", "content": cjk}]})
    assert est >= len(cjk)  # ~1 token per CJK character


def test_estimate_is_fast() -> None:
    body = {"messages": [{"role": "user", "content": PROSE} for _ in range(200)]}  # ~1 MB of text
    t = time.perf_counter()
    for _ in range(20):
        estimate_input_tokens(body)
    assert (time.perf_counter() - t) / 20 < 0.005
