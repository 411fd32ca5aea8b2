"""Tool permissions through the gateway: official SDK tool-use flows against the sim."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from conftest import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from otelgate.config import key_hash
from proxyutil import gateway, serving

A_TOOLS = [
    {"name": name, "description": name, "input_schema": {"type": "object"}}
    for name in ("search", "read_file", "run_shell")
]
O_TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("search", "read_file", "run_shell")
]
R_TOOLS = [{"type": "function", "name": name, "parameters": {"type": "object"}} for name in ("search", "run_shell")]
QUESTION = [{"role": "user", "content": "Find the config file."}]


def config(tmp_path: Path, **policy: Any) -> dict[str, Any]:
    policy = {"allowed_tools": ["search", "read_*"], **policy}
    return {
        "budgets": {"store": f"sqlite:///{tmp_path}/b.db"},
        "keys": [
            {"id": "agent-a", "key_sha256": key_hash(ANTHROPIC_TEST_KEY), **policy},
            {"id": "agent-o", "key_sha256": key_hash(OPENAI_TEST_KEY), **policy},
        ],
    }


def aclient(gw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=ANTHROPIC_TEST_KEY, max_retries=0)


def oclient(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.openai_url, api_key=OPENAI_TEST_KEY, max_retries=0)


def sent_tool_names(request) -> list[str]:
    tools = request.json().get("tools") or []
    return [t["function"]["name"] if "function" in t else t["name"] for t in tools]


async def test_anthropic_forbidden_tool_is_removed(sim, tmp_path):
    sim.script([{"tool_call": {"name": "search", "input": {"q": "config"}}}])
    async with gateway(config(tmp_path), sim, telemetry=None) as gw:
        raw = await aclient(gw).messages.with_raw_response.create(
            model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS
        )
    message = await raw.parse()
    assert message.content[0].name == "search"
    assert sent_tool_names(sim.requests[-1]) == ["search", "read_file"]
    assert raw.headers["x-otelgate-tools-removed"] == "run_shell"


async def test_openai_forbidden_tool_is_removed_and_forced_choice_dropped(sim, tmp_path):
    async with gateway(config(tmp_path), sim, telemetry=None) as gw:
        await oclient(gw).chat.completions.create(
            model="gpt-test",
            messages=QUESTION,
            tools=O_TOOLS,
            tool_choice={"type": "function", "function": {"name": "run_shell"}},
        )
        await oclient(gw).responses.create(model="gpt-test", input="Find the config file.", tools=R_TOOLS)
    chat, responses = sim.requests
    assert sent_tool_names(chat) == ["search", "read_file"] and "tool_choice" not in chat.json()
    assert sent_tool_names(responses) == ["search"]


async def test_only_forbidden_tools_leave_no_tools_field(sim, tmp_path):
    async with gateway(config(tmp_path), sim, telemetry=None) as gw:
        await aclient(gw).messages.create(
            model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS[2:], tool_choice={"type": "any"}
        )
    body = sim.requests[-1].json()
    assert "tools" not in body and "tool_choice" not in body


async def test_level_ceiling_and_unlisted_tools_count_as_execute(sim, tmp_path):
    cfg = config(tmp_path, allowed_tools=None, max_tool_level="write")
    cfg["tool_levels"] = {"search": "read", "read_*": "read"}  # run_shell unlisted: execute
    async with gateway(cfg, sim, telemetry=None) as gw:
        await aclient(gw).messages.create(model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS)
    assert sent_tool_names(sim.requests[-1]) == ["search", "read_file"]


async def test_team_policy_narrows_the_key(sim, tmp_path):
    cfg = config(tmp_path, team="ops")
    cfg["teams"] = [{"id": "ops", "allowed_tools": ["search"]}]
    async with gateway(cfg, sim, telemetry=None) as gw:
        await aclient(gw).messages.create(model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS)
    assert sent_tool_names(sim.requests[-1]) == ["search"]


async def test_refuse_mode_is_403_naming_the_tool(sim, tmp_path):
    async with gateway(config(tmp_path, on_forbidden_tool="refuse"), sim, telemetry=None) as gw:
        with pytest.raises(anthropic.PermissionDeniedError) as a_info:
            await aclient(gw).messages.create(model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS)
        with pytest.raises(openai.PermissionDeniedError) as o_info:
            await oclient(gw).chat.completions.create(model="gpt-test", messages=QUESTION, tools=O_TOOLS)
    for info in (a_info, o_info):
        assert info.value.status_code == 403 and "run_shell" in str(info.value)
    assert sim.requests == []


async def test_anthropic_answer_calling_a_forbidden_tool_is_withheld(sim, tmp_path):
    # The model may call a tool from the conversation's history even though it is no longer offered.
    sim.script([{"text": "Running it.", "tool_call": {"name": "run_shell", "input": {"cmd": "cat /etc/passwd"}}}])
    async with gateway(config(tmp_path), sim, telemetry=None) as gw:
        with pytest.raises(anthropic.PermissionDeniedError) as info:
            await aclient(gw).messages.create(model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS)
    assert "run_shell" in str(info.value)
    assert "Running it." not in info.value.response.text and "passwd" not in info.value.response.text
    assert len(sim.requests) == 1


async def test_openai_answer_calling_a_forbidden_tool_is_withheld(sim, tmp_path):
    sim.script([{"tool_call": {"name": "run_shell", "input": {"cmd": "ls"}}}] * 2)
    async with gateway(config(tmp_path), sim, telemetry=None) as gw:
        with pytest.raises(openai.PermissionDeniedError):
            await oclient(gw).chat.completions.create(model="gpt-test", messages=QUESTION, tools=O_TOOLS)
        with pytest.raises(openai.PermissionDeniedError):
            await oclient(gw).responses.create(model="gpt-test", input="Find it.", tools=R_TOOLS)


async def test_flag_mode_relays_the_answer(sim, tmp_path):
    sim.script([{"tool_call": {"name": "run_shell", "input": {"cmd": "ls"}}}])
    async with gateway(config(tmp_path, on_forbidden_response="flag"), sim, telemetry=None) as gw:
        message = await aclient(gw).messages.create(
            model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS
        )
    assert message.content[0].name == "run_shell"


async def metric_lines(gw, name: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as response:
        return [line for line in (await response.text()).splitlines() if line.startswith(name)]


async def test_streamed_forbidden_call_is_refused_before_the_agent_sees_it(sim, tmp_path):
    # Claude Code and Codex always stream: a forbidden call that reached them would run. The stream ends with an
    # error event before the bytes naming the tool (and whatever arrived from the upstream in the same read).
    step = {"text": "Let me run it.", "tool_calls": [{"name": "run_shell", "input": {"cmd": "rm -rf /"}}]}
    sim.script([step, step])
    async with gateway(config(tmp_path), sim) as gw:
        seen: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as refused:
            async with aclient(gw).messages.stream(
                model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS
            ) as stream:
                async for event in stream:
                    seen.append(event.type)
                    assert not (event.type == "content_block_start" and event.content_block.type == "tool_use")
        assert "tool 'run_shell', which is not permitted for key agent-a (not in allowed_tools)" in str(
            refused.value)
        stream = await oclient(gw).chat.completions.create(
            model="gpt-test", messages=QUESTION, tools=O_TOOLS, stream=True
        )
        names: list[str] = []
        with pytest.raises(openai.APIError) as refused_openai:
            async for chunk in stream:
                for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                    names.append(call.function.name if call.function else "")
        assert names == [] and "run_shell" in str(refused_openai.value)
        lines = await metric_lines(gw, "otelgate_requests_rejected_total")
    rejected = [line for line in lines if 'reason="tool_permission"' in line]
    assert rejected and sum(float(line.rsplit(" ", 1)[1]) for line in rejected) == 2


async def test_streamed_forbidden_call_is_flagged_when_the_policy_says_flag(sim, tmp_path):
    sim.script([{"tool_call": {"name": "run_shell", "input": {"cmd": "ls"}}}] * 2)
    async with gateway(config(tmp_path, on_forbidden_response="flag"), sim) as gw:
        async with aclient(gw).messages.stream(
            model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS
        ) as stream:
            final = await stream.get_final_message()
        stream = await oclient(gw).chat.completions.create(
            model="gpt-test", messages=QUESTION, tools=O_TOOLS, stream=True
        )
        names = [c.function.name async for chunk in stream for c in (chunk.choices[0].delta.tool_calls or [])
                 if chunk.choices and c.function and c.function.name]
        lines = await metric_lines(gw, "otelgate_screening_detections_total")
    assert final.content[0].name == "run_shell" and names == ["run_shell"]
    flagged = [line for line in lines if 'rule="tool_permission:run_shell"' in line]
    assert flagged and 'action="flag"' in flagged[0] and float(flagged[0].rsplit(" ", 1)[1]) == 2


async def test_anonymous_keys_have_no_tool_policy(sim, tmp_path):
    cfg = config(tmp_path)
    cfg["keys"] = cfg["keys"][1:]  # the anthropic test key is now unlisted
    async with gateway(cfg, sim, telemetry=None) as gw:
        await aclient(gw).messages.create(model="claude-test", max_tokens=64, messages=QUESTION, tools=A_TOOLS)
    assert sent_tool_names(sim.requests[-1]) == ["search", "read_file", "run_shell"]


def _chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@pytest.mark.parametrize(("name", "refused"), [("search", False), ("run_shell", True)])
async def test_a_tool_name_arriving_after_its_call_is_judged_by_the_name(tmp_path, name, refused):
    # Some OpenAI-compatible servers open a tool call before naming it, in an earlier read: the empty name must
    # not be refused as "not in allowed_tools", and the name when it comes must be judged. The upstream sends the
    # name only once the agent has received the nameless call, so the two arrive in separate reads.
    delivered = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chat_chunk({"role": "assistant", "content": None}) + _chat_chunk(
            {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"arguments": ""}}]}))
        await delivered.wait()
        await response.write(_chat_chunk({"tool_calls": [{"index": 0, "function": {"name": name}}]})
                             + _chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
                             + _chat_chunk({}, "tool_calls") + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    cfg = config(tmp_path)
    names: list[str] = []

    async def read(stream) -> None:
        async for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                delivered.set()
                if call.function and call.function.name:
                    names.append(call.function.name)

    try:
        async with serving(web.AppRunner(app)) as upstream, gateway(
                {**cfg, "upstreams": {"openai": {"base_url": upstream + "/v1"}}}, None, telemetry=None) as gw:
            stream = await oclient(gw).chat.completions.create(
                model="gpt-test", messages=QUESTION, tools=O_TOOLS, stream=True)
            if refused:
                with pytest.raises(openai.APIError) as error:
                    await read(stream)
                assert "run_shell" in str(error.value)
                assert names == []  # the nameless opening arrived; the forbidden name did not
            else:
                await read(stream)
                assert names == ["search"]
    finally:
        delivered.set()
