"""`otelgate usage`: spend per key/team/window read straight from the store, as a table or JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from otelgate.budgets import Amount, Limit, Window, open_ledger
from otelgate.config import key_hash, load_config
from otelgate.usage import print_usage

SECRET = "sk-ant-usage-SECRET"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "otelgate.yaml"
    path.write_text(yaml.safe_dump({
        "budgets": {"store": f"sqlite:///{tmp_path}/ledger.db"},
        "keys": [
            {"id": "alpha", "key_sha256": key_hash(SECRET), "team": "red",
             "budgets": [{"window": "day", "usd": 10.0}]},
            {"id": "beta", "key_sha256": key_hash("other"), "budgets": [{"window": "month", "tokens": 5000}]},
        ],
        "teams": [{"id": "red", "budgets": [{"window": "month", "usd": 100.0}]}],
    }))
    return path


async def spend(config_file: Path) -> None:
    settings = load_config(config_file)
    led = open_ledger(settings.budgets.store)
    try:
        await led.settle("r1", Amount(usd=2.5, tokens=1200, calls=1),
                         limits=[Limit("key", "alpha", Window.day(), usd=10.0),
                                 Limit("team", "red", Window.month(), usd=100.0)])
    finally:
        await led.close()


async def test_table(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await spend(config_file)
    assert await print_usage(load_config(config_file)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["SCOPE", "ID", "WINDOW", "UNIT", "SPENT", "RESERVED", "LIMIT", "REMAINING", "USED",
                                "RESETS", "(UTC)"]
    alpha = next(line for line in lines if line.startswith("key") and "alpha" in line).split()
    assert alpha[:9] == ["key", "alpha", "day@UTC", "usd", "$2.50", "$0.00", "$10.00", "$7.50", "25%"]
    assert any(line.split()[:5] == ["key", "beta", "month@UTC", "tokens", "0"] for line in lines)
    assert any(line.split()[:5] == ["team", "red", "month@UTC", "usd", "$2.50"] for line in lines)
    assert "SECRET" not in out


async def test_json_for_one_key(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await spend(config_file)
    assert await print_usage(load_config(config_file), key="alpha", as_json=True) == 0
    rows = json.loads(capsys.readouterr().out)["usage"]
    assert {(r["scope"], r["id"]) for r in rows} == {("key", "alpha"), ("team", "red")}
    assert next(r for r in rows if r["scope"] == "key")["spent"] == 2.5


async def test_unknown_key(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await print_usage(load_config(config_file), key="nobody") == 1
    assert "no key 'nobody'" in capsys.readouterr().err


def test_the_command(config_file: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "otelgate", "usage", "--config", str(config_file)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "alpha" in done.stdout and "$10.00" in done.stdout


def test_a_missing_store_file_is_not_created(tmp_path: Path) -> None:
    # Run from the wrong directory, or before the gateway ever started: say so, show the configured limits, and
    # leave no empty ledger file behind (one would look like "nothing spent" to the next reader).
    path = tmp_path / "otelgate.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"id": "alpha", "key_sha256": key_hash(SECRET),
                                              "budgets": [{"window": "day", "usd": 10.0}]}]}))
    done = subprocess.run([sys.executable, "-m", "otelgate", "usage", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "alpha" in done.stdout and "$10.00" in done.stdout
    assert "no budget store at" in done.stderr and "otelgate.db" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["otelgate.yaml"]
