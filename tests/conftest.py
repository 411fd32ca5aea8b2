"""Shared fixtures: a real simulated upstream and a real gateway in front of it, on loopback ports."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from otelgate.sim import SimUpstream
from proxyutil import Gateway, gateway

# Provider keys used by tests: tests assert they never show up anywhere they should not.
ANTHROPIC_TEST_KEY = "sk-ant-test-0123456789abcdefSECRET"
OPENAI_TEST_KEY = "sk-proj-test-0123456789abcdefSECRET"

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
async def sim() -> AsyncIterator[SimUpstream]:
    async with SimUpstream(chunks=4) as upstream:
        yield upstream


@pytest.fixture
async def gw(sim: SimUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway({"budgets": {"store": f"sqlite:///{tmp_path}/otelgate.db"}}, sim, telemetry=None) as g:
        yield g
