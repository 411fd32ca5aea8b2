"""One SQLite connection on a dedicated thread that group-commits whatever operations are queued.

Callers on the event loop queue an operation (a function of the connection) and await a future. The thread
takes everything queued (up to ``max_batch``), runs it in **one** ``BEGIN IMMEDIATE … COMMIT`` — each
operation inside its own savepoint, so a failing one is undone alone — and only after ``COMMIT`` returns
resolves the futures: an acknowledged operation is committed. Under load one commit (its WAL frames, its
lock round-trip, with ``synchronous=FULL`` its fsync) is shared by many requests; alone, an operation is
one transaction as before.

Checkpoints (copying the WAL back into the database file, with an fsync) are the other source of slow
commits: SQLite's automatic checkpoint runs inside whichever commit crosses 1,000 WAL pages. Here it is
off on the request connection and a second thread runs passive checkpoints on its own connection (never
blocking writers), after every ``checkpoint_every`` commits or once a second.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("otelgate.budgets")

Op = Callable[[sqlite3.Connection], Any]


class _Job:
    __slots__ = ("fn", "fut", "loop", "state")

    def __init__(self, fn: Op, loop: asyncio.AbstractEventLoop | None, fut: asyncio.Future[Any] | None) -> None:
        self.fn = fn
        self.loop = loop
        self.fut = fut
        self.state = 0  # 0 queued, 1 taken by the thread, 2 abandoned by its caller (timed out, cancelled)


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():  # the caller gave up (wait_for timeout) after the thread took the job
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class SqliteWorker:
    """Serialises every use of one connection onto one thread; see the module docstring."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, max_batch: int = 64,
                 checkpoint: Callable[[], sqlite3.Connection] | None = None, checkpoint_every: int = 100,
                 after_batch: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._max_batch = max_batch
        self._after_batch = after_batch
        self._q: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._outbox: dict[asyncio.AbstractEventLoop, list[_Job]] = {}  # per loop: jobs not yet handed over
        self._claim = threading.Lock()  # taking vs abandoning a queued job
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ckpt_connect = checkpoint
        self._ckpt_every = checkpoint_every
        self._ckpt_wake = threading.Event()
        self._ckpt_thread: threading.Thread | None = None
        self._stopping = False
        self._since_ckpt = 0
        # Monotonic time the thread last finished an operation or a commit: the store's own progress,
        # independent of how long callers queued or how busy the event loop is (ResilientLedger reads it).
        self.last_answer = 0.0
        self.commits = 0
        self.ops = 0

    # -- event-loop side ---------------------------------------------------------------------------------
    async def run(self, fn: Op) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, loop.create_future())
        self._ensure_started()
        # Jobs queued in the same turn of the loop go to the thread together: one wake-up (and one GIL hand-over)
        # per turn rather than per job.
        outbox = self._outbox.get(loop)
        if outbox is None:
            self._outbox[loop] = [job]
            loop.call_soon(self._hand_over, loop)
        else:
            outbox.append(job)
        assert job.fut is not None
        try:
            return await job.fut
        except asyncio.CancelledError:
            with self._claim:
                if job.state == 0:
                    job.state = 2  # not started: the thread will skip it, nothing reaches the store
            raise

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._outbox.pop(loop, None)
        if jobs:
            self._q.put(jobs)

    async def stop(self) -> None:
        """Finish what is queued, close the connections, end both threads."""
        t = self._thread
        if t is None:
            return
        self._hand_over(asyncio.get_running_loop())
        self._q.put(None)
        await asyncio.get_running_loop().run_in_executor(None, t.join)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                t = threading.Thread(target=self._main, name="otelgate-ledger", daemon=True)
                t.start()
                self._thread = t

    # -- the ledger thread ---------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            while True:
                jobs = self._q.get()
                if jobs is None:
                    break
                batch = list(jobs)
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch += nxt
                for start in range(0, len(batch), self._max_batch):  # a long hand-over: several commits
                    self._run_batch(batch[start:start + self._max_batch])
                if stop:
                    break
        finally:
            self._stopping = True
            self._ckpt_wake.set()
            if self._ckpt_thread is not None:
                self._ckpt_thread.join()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _take(self, batch: list[_Job]) -> list[_Job]:
        with self._claim:
            taken = [j for j in batch if j.state == 0]
            for j in taken:
                j.state = 1
        return taken

    def _run_batch(self, batch: list[_Job]) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
                self._start_checkpointer()
            c = self._conn
            c.execute("BEGIN IMMEDIATE")  # may wait for another process's write (busy_timeout)
        except Exception as e:  # no connection or no lock: nothing ran
            jobs = self._take(batch)
            self._deliver(jobs, [(False, e)] * len(jobs))
            return
        # Taken only now: a caller that gave up while the lock was busy is skipped, not run behind its back.
        jobs = self._take(batch)
        results: list[tuple[bool, Any]]
        try:
            results = self._transaction(c, jobs)
        except Exception as e:  # nothing committed: every job of the batch gets the error
            results = [(False, e)] * len(jobs)
        self._deliver(jobs, results)
        if self._after_batch is not None:
            try:
                self._after_batch(c)
            except Exception as e:  # housekeeping only; the next batch retries it
                log.warning("ledger housekeeping failed: %s", e)

    def _transaction(self, c: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """Run ``jobs`` in the transaction already begun on ``c`` and commit it."""
        try:
            if len(jobs) == 1:  # alone: the transaction is the unit, no savepoint needed
                results: list[tuple[bool, Any]] = [(True, jobs[0].fn(c))]
            else:
                results = self._all_or_each(c, jobs)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        self.last_answer = time.monotonic()
        self.commits += 1
        self.ops += len(jobs)
        self._since_ckpt += 1
        if self._ckpt_thread is not None and self._since_ckpt >= self._ckpt_every:
            self._ckpt_wake.set()
        return results

    def _all_or_each(self, c: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """Run the batch's operations. Operations almost never fail, so they first run without savepoints (two
        statements fewer each, about a fifth of a reserve's cost); if one raises, the transaction is rolled
        back and the batch runs again with each operation in its own savepoint, so only the failing one is
        undone. Operations are functions of the connection and their instant: running one again is safe."""
        try:
            results = []
            for job in jobs:
                results.append((True, job.fn(c)))
                self.last_answer = time.monotonic()  # a long batch still shows the store is working
            return results
        except Exception:
            if c.in_transaction:
                c.execute("ROLLBACK")
            c.execute("BEGIN IMMEDIATE")
        return [self._in_savepoint(c, job.fn) for job in jobs]

    def _in_savepoint(self, c: sqlite3.Connection, fn: Op) -> tuple[bool, Any]:
        c.execute("SAVEPOINT op")
        try:
            out = fn(c)
            self.last_answer = time.monotonic()  # a long batch still shows the store is working
        except Exception as e:
            if not c.in_transaction:
                raise  # SQLite rolled the whole transaction back (I/O error, disk full): the batch fails
            c.execute("ROLLBACK TO op")
            c.execute("RELEASE op")
            return False, e
        c.execute("RELEASE op")
        return True, out

    def _deliver(self, jobs: list[_Job], results: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(jobs, results, strict=True):
            if job.loop is not None and job.fut is not None:
                by_loop.setdefault(job.loop, []).append((job.fut, ok, value))
        for loop, items in by_loop.items():
            try:  # one wake-up of the loop per batch, not per job
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    # -- the checkpoint thread -------------------------------------------------------------------------------
    def _start_checkpointer(self) -> None:
        if self._ckpt_connect is None or self._ckpt_thread is not None:
            return
        t = threading.Thread(target=self._checkpoints, name="otelgate-ledger-ckpt", daemon=True)
        t.start()
        self._ckpt_thread = t

    def _checkpoints(self) -> None:
        assert self._ckpt_connect is not None
        try:
            c = self._ckpt_connect()
        except sqlite3.Error as e:
            log.warning("ledger checkpointer could not open the database: %s", e)
            return
        try:
            while not self._stopping:
                self._ckpt_wake.wait(1.0)
                self._ckpt_wake.clear()
                if self._since_ckpt == 0:
                    continue
                self._since_ckpt = 0
                try:
                    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as e:  # e.g. busy with another process's checkpoint: next time
                    log.debug("ledger checkpoint skipped: %s", e)
        finally:
            c.close()
