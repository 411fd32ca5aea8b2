"""The SQLite ledger's worker thread: operations queued together share one commit, and a failing one is undone
alone (budgets/sqlite_worker.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from otelgate.budgets.sqlite_worker import SqliteWorker


def opener(path: Path):  # type: ignore[no-untyped-def]
    def connect() -> sqlite3.Connection:
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        c.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        return c

    return connect


def insert(key: str):  # type: ignore[no-untyped-def]
    return lambda c: c.execute("INSERT INTO t VALUES (?, 1)", (key,)).rowcount


def half_written_then_failing(c: sqlite3.Connection) -> None:
    c.execute("INSERT INTO t VALUES ('half', 1)")
    raise ValueError("this operation fails after writing")


def keys(c: sqlite3.Connection) -> list[str]:
    return sorted(row[0] for row in c.execute("SELECT k FROM t"))


async def test_operations_queued_together_share_one_commit_and_a_failure_is_undone_alone(tmp_path: Path) -> None:
    worker = SqliteWorker(opener(tmp_path / "w.db"))
    try:
        results = await asyncio.gather(worker.run(insert("a")), worker.run(half_written_then_failing),
                                       worker.run(insert("b")), worker.run(insert("a")), return_exceptions=True)
        assert results[0] == 1 and results[2] == 1
        assert isinstance(results[1], ValueError)
        assert isinstance(results[3], sqlite3.IntegrityError)  # a second "a": refused on its own as well
        assert (worker.commits, worker.ops) == (1, 4)  # one transaction for the four
        assert await worker.run(keys) == ["a", "b"]  # nothing of the failing operation was kept
    finally:
        await worker.stop()


async def test_an_operation_cancelled_before_it_ran_never_reaches_the_database(tmp_path: Path) -> None:
    worker = SqliteWorker(opener(tmp_path / "w.db"))
    try:
        task = asyncio.ensure_future(worker.run(insert("never")))
        await asyncio.sleep(0)  # queued, not yet handed to the thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await worker.run(keys) == []
    finally:
        await worker.stop()
