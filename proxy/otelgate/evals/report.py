"""Reports of an eval: a terminal table, JSON, and JUnit XML for CI systems.

With repetitions, a case's numbers are those of its representative run (the first failure, else the first run),
so they describe one coherent execution whose trace can be opened; every run is listed under ``runs``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otelgate.evals.runner import CaseResult, RunResult


def _run_dict(run: RunResult) -> dict[str, Any]:
    return {
        "passed": run.passed,
        "reasons": run.reasons,
        "iterations": run.iterations,
        "tool_calls": run.tool_calls,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "usd": run.usd,
        "seconds": round(run.seconds, 3),
        "exit_code": run.exit_code,
        "trace_id": run.trace_id,
        "answer": run.answer,
    }


def to_json(results: Sequence[CaseResult]) -> dict[str, Any]:
    cases = []
    for result in results:
        rep = _run_dict(result.representative)
        entry: dict[str, Any] = {"name": result.case.name, **rep, "passed": result.passed, "reasons": result.reasons}
        entry["pass_rate"] = result.pass_rate
        entry["runs"] = [_run_dict(run) for run in result.runs]
        cases.append(entry)
    passed = sum(result.passed for result in results)
    return {"passed": passed, "failed": len(results) - passed, "cases": cases}


def write_json(results: Sequence[CaseResult], path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def to_junit(results: Sequence[CaseResult], suite: str = "otelgate eval") -> ET.ElementTree:
    failures = sum(not result.passed for result in results)
    total_time = sum(run.seconds for result in results for run in result.runs)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures), errors="0")
    testsuite = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures), errors="0",
        skipped="0", time=f"{total_time:.3f}",
    )
    for result in results:
        rep = result.representative
        testcase = ET.SubElement(
            testsuite, "testcase", name=result.case.name, classname="otelgate.eval",
            time=f"{sum(run.seconds for run in result.runs):.3f}",
        )
        properties = ET.SubElement(testcase, "properties")
        for name, value in (
            ("trace_id", rep.trace_id), ("iterations", rep.iterations), ("tokens", rep.tokens),
            ("pass_rate", f"{result.pass_rate:.3f}"),
        ):
            ET.SubElement(properties, "property", name=name, value=str(value))
        if not result.passed:
            reasons = result.reasons
            message = reasons[0] if reasons else "failed"
            failure = ET.SubElement(testcase, "failure", message=message, type="EvalFailure")
            failure.text = "\n".join(reasons) + f"\ntrace_id: {rep.trace_id}"
        ET.SubElement(testcase, "system-out").text = rep.answer
        if rep.stderr:
            ET.SubElement(testcase, "system-err").text = rep.stderr
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(results: Sequence[CaseResult], path: str | Path) -> None:
    to_junit(results).write(path, encoding="utf-8", xml_declaration=True)


def _money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.4f}"


def table(results: Sequence[CaseResult]) -> str:
    """A plain-text table, one row per case, reasons in the last column (one per line)."""
    header = ["case", "result", "iter", "tools", "tokens in/out", "cost", "sec", "reasons"]
    rows: list[list[str]] = []
    for result in results:
        rep = result.representative
        verdict = "PASS" if result.passed else "FAIL"
        if len(result.runs) > 1:
            verdict += f" {sum(r.passed for r in result.runs)}/{len(result.runs)}"
        reasons = result.reasons or [""]
        rows.append([
            result.case.name, verdict, str(rep.iterations), ",".join(dict.fromkeys(rep.tool_calls)) or "-",
            f"{rep.input_tokens}/{rep.output_tokens}", _money(rep.usd), f"{rep.seconds:.1f}", reasons[0],
        ])
        rows += [["", "", "", "", "", "", "", reason] for reason in reasons[1:]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths) + "  -------")
    passed = sum(result.passed for result in results)
    lines.append("")
    lines.append(f"{passed} passed, {len(results) - passed} failed")
    return "\n".join(lines)
