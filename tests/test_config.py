"""Configuration: YAML + OTELGATE_… overrides, strict validation naming the field, secrets never printed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from otelgate.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "otelgate.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch):
    monkeypatch.delenv("OTELGATE_CONFIG", raising=False)
    settings = load_config(None)
    assert settings.auth.mode == "passthrough"
    assert settings.upstreams.anthropic.base_url == "https://api.anthropic.com"
    assert settings.upstreams.openai.base_url == "https://api.openai.com/v1"
    assert settings.server.port == 8787 and settings.budgets.store.startswith("sqlite:")


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "upstreams:\n  anthropic:\n    base_url: http://from-file:1\n")
    monkeypatch.setenv("OTELGATE_UPSTREAMS__ANTHROPIC__BASE_URL", "http://from-env:2")
    monkeypatch.setenv("OTELGATE_UPSTREAMS__ANTHROPIC__TIMEOUTS__CONNECT", "1.5")
    settings = load_config(path)
    assert settings.upstreams.anthropic.base_url == "http://from-env:2"
    assert settings.upstreams.anthropic.timeouts.connect == 1.5


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("server: {prot: 1}\n", "server.prot: unknown field"),
        ("bogus: 1\n", "bogus: unknown field"),
        ("upstreams:\n  openai:\n    retry: {max_attempts: 0}\n", "upstreams.openai.retry.max_attempts"),
        ("keys:\n  - {id: a, key_sha256: nothex}\n", "keys.0.key_sha256"),
        ("keys:\n  - id: a\n    key_sha256: " + "a" * 64 + "\n    budgets: [{usd: 1}]\n", "exactly one of window"),
        ("auth: {mode: virtual_keys}\n", "virtual_keys needs at least one entry under keys"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert fragment in str(info.value)


def test_secrets_from_env_and_files(tmp_path, monkeypatch):
    secret_file = tmp_path / "admin"
    secret_file.write_text("admin-from-file\n")
    monkeypatch.setenv("MY_UPSTREAM_KEY", "sk-from-env")
    monkeypatch.delenv("UNSET_KEY", raising=False)
    path = write(
        tmp_path,
        f"auth:\n  admin_key: file:{secret_file}\nupstreams:\n  anthropic:\n    api_key: ${{MY_UPSTREAM_KEY}}\n"
        "  openai:\n    api_key: ${UNSET_KEY}\n",
    )
    settings = load_config(path)
    assert settings.auth.admin_key.get_secret_value() == "admin-from-file"
    assert settings.upstreams.anthropic.api_key.get_secret_value() == "sk-from-env"
    assert settings.upstreams.openai.api_key is None, "an unset ${VAR} means no key, not an error"
    assert "sk-from-env" not in repr(settings)


def test_check_config_prints_the_effective_config_masked(tmp_path):
    path = write(tmp_path, "auth:\n  admin_key: adm-very-secret\nupstreams:\n  anthropic:\n    api_key: sk-ant-xyz\n")
    done = subprocess.run(
        [sys.executable, "-m", "otelgate", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["upstreams"]["anthropic"]["api_key"] == "**********"
    assert "adm-very-secret" not in done.stdout + done.stderr and "sk-ant-xyz" not in done.stdout + done.stderr


def test_check_config_warns_of_virtual_keys_without_a_provider_key(tmp_path):
    # Valid, but every request to that provider would be refused: say so before the first agent finds out.
    path = write(tmp_path, "auth: {mode: virtual_keys}\nkeys: [{id: a, key_sha256: '" + "0" * 64 + "'}]\n"
                 "upstreams: {anthropic: {api_key: sk-ant-xyz}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "otelgate", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "warning: auth.mode is virtual_keys but upstreams.openai.api_key is not set" in done.stderr
    assert "upstreams.anthropic.api_key is not set" not in done.stderr


def test_check_config_rejects_a_bad_file_with_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "otelgate", "check-config", str(write(tmp_path, "server: {prot: 1}\n"))],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "server.prot: unknown field" in done.stderr


def test_keys_new_prints_a_key_and_its_sha256():
    done = subprocess.run(
        [sys.executable, "-m", "otelgate", "keys", "new", "--id", "bot"], capture_output=True, text=True, timeout=60
    )
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("key:", "key_sha256:")))
    key, digest = lines["key"].strip(), lines["key_sha256"].strip()
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    assert f"- id: bot\n    key_sha256: {digest}" in done.stdout


def test_the_readme_configuration_reference_is_valid(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    for name in ("OTELGATE_ADMIN_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "x")
    settings = load_config(write(tmp_path, block))
    assert settings.keys[0].limits.session.max_calls == 50
