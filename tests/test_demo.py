"""`otelgate demo` runs on a fresh machine with no key and no network, and shows what it promises."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_shows_retry_injection_block_session_limit_budget_stop_and_trace():
    done = subprocess.run(
        [sys.executable, "-m", "otelgate", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Paris is 18°C and sunny" in out, "the tool-using agent completes its task"
    assert re.search(r"run-weather\s+200\s+2\s", out), "the first call took two attempts (a 529, then success)"
    assert "refused (403)" in out and "prompt-injection screening" in out
    assert "attacker.test" not in out, "the refusal does not echo the attack"
    assert re.search(r"session limit of 4 calls for session [\w.-]+/run-loop reached", out)
    assert "daily budget of $0.02 for key demo-intern reached" in out
    assert "execute_tool get_weather" in out and "status=529" in out, "the trace tree shows tools and attempts"
    assert "sk-ant-demo" not in out + done.stderr, "no key is ever printed"
