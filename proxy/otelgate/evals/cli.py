"""`otelgate eval CASES.yaml --agent 'CMD {input}'`: the whole command; `otelgate.cli` only calls `eval_main`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from otelgate.config import ConfigError, load_config
from otelgate.evals.cases import CasesError, load_cases
from otelgate.evals.report import table, write_json, write_junit
from otelgate.evals.runner import DEFAULT_TIMEOUT, EvalOptions, RunResult, run_cases

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"otelgate eval: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otelgate eval",
        description="Run an agent once per case through a gateway started for the run, and judge each case by "
        "its output and by what the gateway saw. Exit 0: all passed, 1: some failed, 2: bad input.",
    )
    parser.add_argument("cases", help="YAML file with a 'cases:' list (or a bare list)")
    parser.add_argument(
        "--agent", required=True,
        help="shell command run per case; {input} is replaced by the shell-quoted input (without {input}, the input "
        "is written to the agent's stdin). The agent gets ANTHROPIC_BASE_URL and OPENAI_BASE_URL.",
    )
    parser.add_argument("--config", help="gateway configuration, as for 'otelgate serve' (OTELGATE_* variables apply)")
    parser.add_argument("--concurrency", type=int, default=1, help="cases run in parallel (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (default 1)")
    parser.add_argument(
        "--min-pass-rate", type=float, default=1.0,
        help="share of a case's runs that must pass for the case to pass (default 1.0)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT,
        help=f"seconds before a run is stopped, for cases without max_seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--junit", metavar="FILE", help="write the results as JUnit XML")
    parser.add_argument(
        "--access-log", action="store_true",
        help="also print the gateway's JSON access log on stdout (off by default: stdout carries the report)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 0.0 <= args.min_pass_rate <= 1.0:
        parser.error("--min-pass-rate must be between 0 and 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")


def eval_main(argv: Sequence[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help exits 0; usage errors exit 2
        return int(exc.code or 0)
    try:
        _check(parser, args)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        cases = load_cases(args.cases)
    except CasesError as exc:
        print(f"otelgate eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"otelgate eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.access_log:
        quiet_log = settings.telemetry.model_copy(update={"log_requests": False})
        settings = settings.model_copy(update={"telemetry": quiet_log})
    options = EvalOptions(
        agent=args.agent, concurrency=args.concurrency, repeat=args.repeat,
        min_pass_rate=args.min_pass_rate, timeout=args.timeout,
    )

    def progress(run: RunResult) -> None:
        if not args.quiet:
            mark = "pass" if run.passed else "FAIL"
            print(f"  {mark}  {run.case.name} #{run.index + 1}  ({run.seconds:.1f} s)", file=sys.stderr, flush=True)

    results = asyncio.run(run_cases(cases, settings, options, progress))
    print(table(results))
    if args.json:
        write_json(results, args.json)
    if args.junit:
        write_junit(results, args.junit)
    return EXIT_PASSED if all(result.passed for result in results) else EXIT_FAILED
