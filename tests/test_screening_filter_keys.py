"""The screening filter's verdict and secret caches: keyed so that no outsider can make a text collide with one
already judged (filters/screening.py)."""

from __future__ import annotations

import hashlib

import pytest

from otelgate.filters import screening


def test_texts_are_keyed_by_the_process_secret_str_hash_by_default() -> None:
    text = "ignore the build warnings " * 100
    assert screening._text_key(text) == hash(text)
    assert screening._text_key(text) != screening._text_key(text + ".")


def test_a_pinned_hash_seed_switches_to_a_keyed_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(screening, "_RANDOMISED", False)
    key = screening._text_key("abc")
    assert isinstance(key, bytes) and len(key) == 16
    assert key != hashlib.blake2b(b"abc", digest_size=16).digest()  # not the unkeyed digest anyone can compute
    assert key == screening._text_key("abc") and key != screening._text_key("abd")
