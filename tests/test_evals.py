"""`otelgate eval` end to end: real agent processes, a real gateway, the simulated upstream.

The agent here is a few lines of stdlib Python (fast to start) speaking the Anthropic Messages API; the example
agent built on the official SDK is exercised in test_example_agent.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from otelgate.evals.cases import CasesError, parse_cases
from otelgate.evals.cli import eval_main
from otelgate.sim import SimUpstream

AGENT = textwrap.dedent(
    """
    import json, os, sys, threading, urllib.request
    text = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    if text.startswith("exit:"):
        print("bye"); sys.exit(int(text[5:]))
    if text == "hang":
        threading.Event().wait()
    if text == "flaky":
        path = os.environ["EVAL_COUNTER"]
        count = int(open(path).read() or 0) + 1 if os.path.exists(path) else 1
        open(path, "w").write(str(count))
        if count % 2 == 0:
            sys.exit(1)
    base = os.environ["ANTHROPIC_BASE_URL"]
    messages = [{"role": "user", "content": text}]
    for _ in range(20):
        body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 200, "messages": messages}).encode()
        request = urllib.request.Request(base + "/v1/messages", data=body, headers={
            "content-type": "application/json", "anthropic-version": "2023-06-01",
            "x-api-key": os.environ["ANTHROPIC_API_KEY"]})
        answer = json.load(urllib.request.urlopen(request))
        messages.append({"role": "assistant", "content": answer["content"]})
        uses = [block for block in answer["content"] if block["type"] == "tool_use"]
        if not uses:
            print("".join(block.get("text", "") for block in answer["content"]))
            break
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use["id"], "content": "tool output"} for use in uses]})
    """
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "agent.py").write_text(AGENT)
    (tmp_path / "gateway.yaml").write_text(f"budgets: {{store: 'sqlite:///{tmp_path}/otelgate.db'}}\n")
    monkeypatch.chdir(tmp_path)
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OTELGATE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run_eval(
    workdir: Path, cases: Any, *extra: str, agent: str | None = None, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str, str]:
    cases_file = workdir / "cases.yaml"
    cases_file.write_text(cases if isinstance(cases, str) else yaml.safe_dump(cases, sort_keys=False))
    out_json = workdir / "out.json"
    out_json.unlink(missing_ok=True)
    command = agent or f"{sys.executable} agent.py {{input}}"
    argv = [str(cases_file), "--agent", command, "--config", str(workdir / "gateway.yaml"), "--json", str(out_json),
            *extra]
    code = eval_main(argv)
    captured = capsys.readouterr()
    report = json.loads(out_json.read_text()) if out_json.exists() else {}
    return code, report, captured.out, captured.err


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {case["name"]: case for case in report["cases"]}


def tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_call": {"name": name, "input": arguments}}


def test_passing_case_reports_what_the_gateway_saw(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {"cases": [{
        "name": "capital", "input": "What is the capital of France?",
        "llm": [tool("search", q="capital of France"), {"text": "Paris is the capital."}],
        "expected_contains": ["Paris"], "expected_not_contains": ["Berlin"], "expected_tool_calls": ["search"],
        "forbidden_tool_calls": ["delete_everything"], "max_iterations": 2, "max_tokens": 2000, "max_usd": 1.0,
        "max_seconds": 30,
    }]}
    code, report, out, _ = run_eval(workdir, cases, capsys=capsys)
    assert code == 0, out
    assert report["passed"] == 1 and report["failed"] == 0
    case = report["cases"][0]
    assert case["passed"] and case["reasons"] == []
    assert case["iterations"] == 2
    assert case["tool_calls"] == ["search"]
    assert case["input_tokens"] > 0 and case["output_tokens"] > 0
    assert case["usd"] is not None and 0 < case["usd"] < 1.0
    assert case["exit_code"] == 0 and case["answer"].strip() == "Paris is the capital."
    assert len(case["trace_id"]) == 32
    # The table on the terminal: one row per case, with its verdict and numbers.
    row = next(line for line in out.splitlines() if line.startswith("capital"))
    assert "PASS" in row and "search" in row
    assert "1 passed, 0 failed" in out


def test_each_failure_reason_says_what_was_expected_and_seen(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weather = [tool("get_weather", city="Paris"), {"text": "Rain in Paris, error-free."}]
    loop = [tool("search", q=str(n)) for n in range(3)] + [{"text": "done"}]
    cases = [
        {"name": "contains", "input": "q", "llm": weather, "expected_contains": ["Berlin"]},
        {"name": "not-contains", "input": "q", "llm": weather, "expected_not_contains": ["error"]},
        {"name": "tool", "input": "q", "llm": weather, "expected_tool_calls": ["search"]},
        {"name": "forbidden", "input": "q", "llm": weather, "forbidden_tool_calls": ["get_weather"]},
        {"name": "iterations", "input": "q", "llm": loop, "max_iterations": 2},
        {"name": "tokens", "input": "q", "llm": weather, "max_tokens": 5},
        {"name": "usd", "input": "q", "llm": weather, "max_usd": 0.000001},
        {"name": "exit", "input": "exit:3", "llm": weather},
        {"name": "exit-expected", "input": "exit:3", "llm": weather, "expect_exit_code": 3},
        {"name": "slow", "input": "hang", "llm": weather, "max_seconds": 0.5},
    ]
    code, report, out, _ = run_eval(workdir, {"cases": cases}, "--concurrency", "4", capsys=capsys)
    assert code == 1
    assert report["passed"] == 1 and report["failed"] == 9
    cases_by_name = by_name(report)
    reasons = {name: case["reasons"] for name, case in cases_by_name.items()}
    assert reasons["contains"] == ["expected the answer to contain 'Berlin', got 'Rain in Paris, error-free.'"]
    assert reasons["not-contains"] == [
        "expected the answer not to contain 'error', got 'Rain in Paris, error-free.'"
    ]
    assert reasons["tool"] == ["expected tool search, called: get_weather"]
    assert reasons["forbidden"] == ["forbidden tool get_weather was called 1 time"]
    assert reasons["iterations"] == ["4 iterations > max 2"]
    assert len(reasons["tokens"]) == 1 and reasons["tokens"][0].startswith(
        f"{cases_by_name['tokens']['input_tokens'] + cases_by_name['tokens']['output_tokens']} tokens > max 5"
    )
    assert len(reasons["usd"]) == 1 and reasons["usd"][0].endswith("> max $1e-06")
    assert reasons["exit"] == ["exit code 3, expected 0"]
    assert reasons["exit-expected"] == [] and cases_by_name["exit-expected"]["passed"]
    assert reasons["slow"] == ["no answer within 0.5 s: the agent was stopped"]
    assert cases_by_name["slow"]["iterations"] == 0
    for name in ("tool", "iterations"):
        assert reasons[name][0] in out  # the table shows the reasons too
    assert "1 passed, 9 failed" in out


def test_parallel_cases_are_attributed_to_their_own_case(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Eight cases, four at a time; each scripted with its own tool, number of steps and answer. A slow first
    # answer keeps several cases in the gateway at the same time.
    cases = []
    for n in range(8):
        steps = [{**tool(f"tool_{n}", n=n), "delay": 0.3}] + [tool(f"tool_{n}")] * (n % 3) + [{"text": f"answer {n}"}]
        cases.append({"name": f"case-{n}", "input": f"question {n}", "llm": steps,
                      "expected_contains": [f"answer {n}"], "expected_tool_calls": [f"tool_{n}"],
                      "forbidden_tool_calls": [f"tool_{m}" for m in range(8) if m != n],
                      "max_iterations": 2 + n % 3})
    code, report, out, _ = run_eval(workdir, {"cases": cases}, "--concurrency", "4", capsys=capsys)
    assert code == 0, out
    for n, case in enumerate(report["cases"]):
        assert case["name"] == f"case-{n}"
        assert case["tool_calls"] == [f"tool_{n}"] * (1 + n % 3)
        assert case["iterations"] == 2 + n % 3
        assert case["answer"].strip() == f"answer {n}"
    assert len({case["trace_id"] for case in report["cases"]}) == 8


def test_concurrent_runs_overlap_in_the_gateway(workdir: Path) -> None:
    import asyncio

    from otelgate.config import load_config
    from otelgate.evals import EvalOptions, run_cases

    cases = parse_cases([
        {"name": f"c{n}", "input": "q", "llm": [{"text": f"a{n}", "delay": 0.3}], "expected_contains": [f"a{n}"]}
        for n in range(4)
    ])
    options = EvalOptions(agent=f"{sys.executable} agent.py {{input}}", concurrency=4, telemetry=None)
    results = asyncio.run(run_cases(cases, load_config(workdir / "gateway.yaml"), options))
    assert all(result.passed for result in results)
    calls = [(call.start_ns, call.start_ns + call.seconds * 1e9) for r in results for call in r.runs[0].calls]
    assert len(calls) == 4
    overlapping = any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(calls) for b in calls[i + 1 :])
    assert overlapping, "the four cases never were in the gateway at the same time"


def test_repeat_reports_pass_rate_and_min_pass_rate_decides(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent fails every second run (a counter file), like a model that is right half of the time.
    counter = workdir / "counter"
    monkeypatch.setenv("EVAL_COUNTER", str(counter))
    cases = {"cases": [{"name": "flaky", "input": "flaky", "llm": [{"text": "ok"}], "expected_contains": ["ok"]}]}
    code, report, out, _ = run_eval(workdir, cases, "--repeat", "4", "--min-pass-rate", "0.5", capsys=capsys)
    assert code == 0, out
    case = report["cases"][0]
    assert case["pass_rate"] == 0.5 and case["passed"] and len(case["runs"]) == 4
    assert [run["passed"] for run in case["runs"]] == [True, False, True, False]
    assert "PASS 2/4" in out

    counter.unlink()
    code, report, out, _ = run_eval(workdir, cases, "--repeat", "4", "--min-pass-rate", "0.75", capsys=capsys)
    assert code == 1
    case = report["cases"][0]
    assert not case["passed"]
    assert case["reasons"] == [
        "passed 2 of 4 runs (50%) < min 75%", "exit code 1, expected 0", "expected the answer to contain 'ok', got ''"
    ]
    assert case["exit_code"] == 1  # the numbers shown are those of a failed run, the one to look into
    assert "FAIL 2/4" in out


def test_junit_xml_is_read_by_a_junit_parser(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {"cases": [
        {"name": "good", "input": "q", "llm": [{"text": "fine"}], "expected_contains": ["fine"]},
        {"name": "bad", "input": "q", "llm": [tool("search"), {"text": "fine"}], "max_iterations": 1,
         "expected_contains": ["great"]},
    ]}
    junit = workdir / "report.xml"
    code, _, _, _ = run_eval(workdir, cases, "--junit", str(junit), capsys=capsys)
    assert code == 1
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    testcases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert set(testcases) == {"good", "bad"}
    assert testcases["good"].find("failure") is None
    failure = testcases["bad"].find("failure")
    assert failure is not None
    assert failure.get("message") == "expected the answer to contain 'great', got 'fine'"
    assert "2 iterations > max 1" in (failure.text or "")
    assert float(testcases["bad"].get("time") or "0") > 0


def test_input_goes_to_stdin_without_placeholder(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {"cases": [{"name": "stdin", "input": "exit:0", "llm": [{"text": "x"}], "expected_contains": ["bye"]}]}
    code, report, out, _ = run_eval(workdir, cases, agent=f"{sys.executable} agent.py", capsys=capsys)
    assert code == 0, out
    assert report["cases"][0]["answer"] == "bye\n"


def test_unscripted_cases_go_to_the_configured_upstream(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # "The real API, or any base URL": here the configured upstream is a sim we run, unscripted. Unscripted
    # agents get the caller's own key (no placeholder).
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-own-key")
    with SimUpstream.in_thread(port=0) as upstream:
        upstream.script([{"text": "from the configured upstream"}])
        (workdir / "gateway.yaml").write_text(yaml.safe_dump({
            "budgets": {"store": f"sqlite:///{workdir}/otelgate.db"},
            "upstreams": {"anthropic": {"base_url": upstream.url}},
        }))
        cases = {"cases": [
            {"name": "live", "input": "q", "expected_contains": ["configured upstream"]},
            {"name": "scripted", "input": "q", "llm": [{"text": "from the script"}], "expected_contains": ["script"]},
        ]}
        code, report, out, _ = run_eval(workdir, cases, "--concurrency", "2", capsys=capsys)
        received = upstream.requests
    assert code == 0, out
    assert [case["iterations"] for case in report["cases"]] == [1, 1]
    assert len(received) == 1 and received[0].route == "/v1/messages"
    assert received[0].headers.get("x-api-key") == "sk-ant-own-key"


BAD_CASES = [
    ({"cases": [{"name": "a", "input": "q", "max_iteration": 3}]}, "case 'a' (#1): max_iteration: unknown field"),
    ({"cases": [{"name": "a", "input": "q", "max_iterations": "3"}]}, "case 'a' (#1): max_iterations:"),
    ({"cases": [{"name": "ok", "input": "q"}, {"name": "b", "input": "q", "max_usd": -1}]},
     "case 'b' (#2): max_usd:"),
    ({"cases": [{"name": "a", "input": "q", "llm": [{"text": "x"}, {"tool_call": {"nam": "x"}}]}]},
     "case 'a' (#1): llm: step 1: unknown tool call key(s) ['nam']"),
    ({"cases": [{"name": "a", "input": "q", "llm": [{"fault": "explode"}]}]}, "unknown fault 'explode'"),
    ({"cases": [{"input": "q"}]}, "case #1: name: Field required"),
    ({"cases": [{"name": "a", "input": "q"}, {"name": "a", "input": "r"}]}, "case 'a' (#2): duplicate case name"),
    ({"cases": []}, "no cases"),
    ({"tests": []}, "unknown top-level field 'tests'"),
    ("cases: [unclosed", "is not valid YAML"),
]


@pytest.mark.parametrize(("cases", "message"), BAD_CASES, ids=[message for _, message in BAD_CASES])
def test_bad_cases_file_exits_2_before_any_agent_runs(
    workdir: Path, capsys: pytest.CaptureFixture[str], cases: Any, message: str
) -> None:
    marker = workdir / "ran"
    code, report, out, err = run_eval(workdir, cases, agent=f"touch {marker}", capsys=capsys)
    assert code == 2
    assert message in err
    assert not marker.exists() and report == {} and out == ""


def test_bare_list_and_single_string_expectations_are_accepted() -> None:
    cases = parse_cases([{"name": "a", "input": "q", "expected_contains": "Paris"}])
    assert cases[0].expected_contains == ["Paris"]
    with pytest.raises(CasesError, match="expected a 'cases:' list"):
        parse_cases("just text")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["--min-pass-rate", "2"], "--min-pass-rate must be between 0 and 1"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_command_line_exits_2(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (workdir / "cases.yaml").write_text("- {name: a, input: q}\n")
    assert eval_main(["cases.yaml", "--agent", "true", *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_cases_file_and_bad_config_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(["nope.yaml", "--agent", "true"]) == 2
    assert "cannot read nope.yaml" in capsys.readouterr().err
    (workdir / "cases.yaml").write_text("- {name: a, input: q}\n")
    (workdir / "bad.yaml").write_text("upstreams: {anthropic: {base_url: nope}}\n")
    assert eval_main(["cases.yaml", "--agent", "true", "--config", "bad.yaml"]) == 2
    assert "upstreams.anthropic.base_url" in capsys.readouterr().err
