"""The stdout access log: one JSON object per line with the fields in order, written off the request path; a
blocked stdout drops (and counts) lines instead of stalling the caller."""

from __future__ import annotations

import io
import json
import threading
import time

from otelgate.telemetry.logs import AccessLog
from otelgate.telemetry.setup import ExportStats


def test_lines_are_json_objects_with_ts_first() -> None:
    stream = io.StringIO()
    log = AccessLog(ExportStats(), to_stdout=True, logger_provider=None, stream=stream)
    assert log.enabled and not log.otlp
    log.emit({"level": "info", "model": "claude-ü", "cost_usd": 0.0123, "verdicts": None, "odd": {1: object}}, None)
    log.emit({"level": "info", "big": 2**70}, None)  # beyond 64 bits: still written
    log.close()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first)[:2] == ["ts", "level"] and abs(first["ts"] - time.time()) < 60
    assert first["model"] == "claude-ü" and first["cost_usd"] == 0.0123 and first["verdicts"] is None
    assert first["odd"] == {"1": str(object)}
    assert second["big"] == 2**70


class BlockedStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_a_blocked_stdout_drops_and_counts_instead_of_blocking() -> None:
    stats, stream = ExportStats(), BlockedStream()
    log = AccessLog(stats, to_stdout=True, logger_provider=None, stream=stream, queue_size=4)
    started = time.monotonic()
    for i in range(20):
        log.emit({"n": i}, None)
    assert time.monotonic() - started < 1.0  # the stream is blocked: emit never waits for it
    dropped = stats.dropped["logs"]
    assert dropped >= 12  # at most 4 queued plus one batch (at most 4) taken by the blocked writer
    stream.release.set()
    log.close()
    written = [json.loads(line)["n"] for line in stream.getvalue().splitlines()]
    assert len(written) == 20 - dropped and written == sorted(written)
