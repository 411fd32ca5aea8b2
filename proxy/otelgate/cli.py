"""`otelgate …` commands (also `python -m otelgate …`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
from collections.abc import Sequence

from otelgate import __version__
from otelgate.config import ConfigError, Settings, key_hash, load_config, masked_dump


def _load(path: str | None, overrides: dict[str, object] | None = None) -> Settings:
    settings = load_config(path)
    if overrides:
        data = settings.model_dump(by_alias=True)
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)  # type: ignore[union-attr]
        settings = Settings.model_validate(_reveal(data))
    return settings


def _reveal(node: object) -> object:
    # model_dump keeps SecretStr objects; Settings accepts them back as they are.
    if isinstance(node, dict):
        return {k: _reveal(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_reveal(v) for v in node]
    return node


def cmd_serve(args: argparse.Namespace) -> int:
    server: dict[str, object] = {}
    if args.host:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.workers is not None:
        server["workers"] = args.workers
    settings = _load(args.config, {"server": server} if server else None)
    from otelgate.server import serve

    return serve(settings)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_config(args.file)
    print(json.dumps(masked_dump(settings), indent=2))
    for warning in settings.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = "og-" + secrets.token_urlsafe(32)
    print(f"key:        {key}")
    print(f"key_sha256: {key_hash(key)}")
    print()
    print("Give the key to the agent (as its provider API key). Put this in the config; the key itself is not")
    print("stored anywhere and cannot be shown again:")
    print(f"  - id: {args.id}\n    key_sha256: {key_hash(key)}")
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    from otelgate.screening import Screener, screen_lines

    settings = load_config(args.config)
    screener = Screener.from_packs(settings.screening.packs, threshold=settings.screening.threshold)
    source = sys.stdin if args.file in (None, "-") else open(args.file, encoding="utf-8")
    with source:
        if args.jsonl:
            lines = source
        else:
            lines = [source.read()]
        for verdict in screen_lines(lines, jsonl=args.jsonl, screener=screener, action=settings.screening.mode,
                                    location=args.location):
            print(json.dumps(verdict, ensure_ascii=False))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from otelgate.usage import print_usage

    settings = load_config(args.config)
    return asyncio.run(print_usage(settings, key=args.key, as_json=args.json))


def cmd_demo(args: argparse.Namespace) -> int:
    from otelgate.demo import run_demo

    return run_demo()


def cmd_eval(argv: list[str]) -> int:
    from otelgate.evals.cli import eval_main

    return eval_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otelgate", description="A production gateway for AI agents.")
    parser.add_argument("--version", action="version", version=f"otelgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config file (default: $OTELGATE_CONFIG, else built-in defaults)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="a tool-using agent through the proxy against a simulated LLM; no key needed")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check-config", help="validate a config and print it with secrets masked")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    screen = sub.add_parser("screen", help="screen text for prompt injection; one JSON verdict per input")
    screen.add_argument("file", nargs="?", help="a file, or - / nothing for stdin")
    screen.add_argument("--jsonl", action="store_true", help="input rows are JSON objects with a text field")
    screen.add_argument("--location", choices=["user", "tool_result", "system", "documents"],
                        help="where the proxy would find the text (some rules count only in tool results and "
                        "documents); default: every rule counts. A JSONL row's own location wins")
    screen.add_argument("--config")
    screen.set_defaults(func=cmd_screen)

    usage = sub.add_parser("usage", help="budgets and spend per key, team and window")
    usage.add_argument("--key")
    usage.add_argument("--config")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=cmd_usage)

    keys = sub.add_parser("keys", help="virtual keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="mint a virtual key and print its hash for the config")
    new.add_argument("--id", required=True)
    new.set_defaults(func=cmd_keys_new)

    # `eval` parses its own arguments (evals/cli.py); listed here for --help.
    sub.add_parser("eval", help="run an agent over a cases file through the gateway", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] == "eval":
        return cmd_eval(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"otelgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
