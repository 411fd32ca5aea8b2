"""Outbound secret detection and redaction. The sample keys are synthetic (right shape, random body)."""

from __future__ import annotations

import pytest

from otelgate.screening import SecretMatch, find_secrets, redact_secrets

SAMPLES = {
    "anthropic_api_key": "sk-ant-api03-" + "Xy7kQ2mN9pR4sT6vW8zA1bC3dE5fG7hJ9kL2mN4pQ6rS8tU0vW2xY4zA6bC8dE0fG-AbCdEfAA",
    "openai_api_key": "sk-proj-" + "Ab3Cd5Ef7Gh9Ij1Kl3Mn5Op7Qr9St1Uv3Wx5Yz7Ab9Cd1Ef3Gh5",
    "aws_access_key_id": "AKIAZ7Q3LMN4OP5QR6ST",
    "github_token": "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "slack_token": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "google_api_key": "AIza" + "SyB3x9Kq2Lm4Np6Rt8Vw0Yz2Ab4Cd6Ef8Gh",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
           "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
}

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi6Z5ZcT7dq0pXb1nR0y9nqk8sY\n"
    "Zx4WqYw6m1d7n4v8Q2J3k5L7p9R1t3V5x7Z9b1D3f5H7j9L1n3P5r7T9v1X3z5B7\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_kind_is_found_with_exact_span(kind: str) -> None:
    secret = SAMPLES[kind]
    text = f"here is my config: {secret} please debug it"
    found = find_secrets(text)
    assert found == [SecretMatch(kind, text.index(secret), text.index(secret) + len(secret))]


def test_pem_private_key_block_is_one_match() -> None:
    text = f"key file:\n{PEM}\nend"
    [m] = find_secrets(text)
    assert m.kind == "private_key"
    assert text[m.start:m.end] == PEM


def test_generic_assignment_needs_high_entropy() -> None:
    random_value = "q8Zr2LmX9vTc4NbWk7Ph3YsJ"
    found = find_secrets(f'API_KEY="{random_value}"')
    assert [m.kind for m in found] == ["generic_secret"]
    assert find_secrets("password = aaaaaaaaaaaaaaaaaaaa") == []
    assert find_secrets("api_key: your-api-key-goes-here") == []


def test_anthropic_key_is_not_reported_as_openai() -> None:
    kinds = [m.kind for m in find_secrets(SAMPLES["anthropic_api_key"])]
    assert kinds == ["anthropic_api_key"]


@pytest.mark.parametrize(
    "text",
    [
        "The sk-learn docs and the skeleton key of the sketch: sk-8 is a model number.",
        "Ask about task-specific skills; risk-averse desk-based work.",
        "commit 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 fixed it",
        "md5 d41d8cd98f00b204e9800998ecf8427e and uuid 123e4567-e89b-12d3-a456-426614174000",
        "AKIA is a prefix AWS uses; the word AKIAL is not a key.",
        "Tokens like eyJ at the start of base64 JSON are common: eyJhbGciOi is a header.",
    ],
)
def test_ordinary_text_is_not_flagged(text: str) -> None:
    assert find_secrets(text) == []


def test_redaction_replaces_every_secret_and_keeps_the_rest() -> None:
    aws, gh = SAMPLES["aws_access_key_id"], SAMPLES["github_token"]
    text = f"aws={aws}\ngithub {gh} done"
    out = redact_secrets(text)
    assert out == "aws=[REDACTED:aws_access_key_id]\ngithub [REDACTED:github_token] done"
    assert aws not in out and gh not in out
    assert redact_secrets("nothing to see") == "nothing to see"


def test_match_holds_no_copy_of_the_secret() -> None:
    [m] = find_secrets("key " + SAMPLES["aws_access_key_id"])
    assert SAMPLES["aws_access_key_id"] not in repr(m)
    assert set(m.__slots__) == {"kind", "start", "end"}  # type: ignore[attr-defined]
