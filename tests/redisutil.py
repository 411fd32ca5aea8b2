"""A real ``redis-server`` for tests: started on a free loopback port, stopped (or paused, or restarted on
the same port and data directory) on demand.

Use from a test module::

    from redisutil import RedisServer, redis_fixture

    redis_server = redis_fixture()                # a module-scoped fixture named redis_server
    def test_x(redis_server): redis_server.url     # "redis://127.0.0.1:PORT/0"

or ``with RedisServer.start(tmp_path) as srv: ...`` anywhere (benchmarks too).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process. ``appendonly`` keeps writes across stop/start like a production store."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, data_dir: Path | str | None = None, **kw: Any) -> RedisServer:
        srv = cls(Path(data_dir or tempfile.mkdtemp(prefix="otelgate-redis-")), **kw)
        srv.launch()
        return srv

    def launch(self, deadline_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            if _answers_ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {deadline_s}s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): like a restart of the store."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.launch()

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers — a hung store."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_fixture(scope: str = "module") -> Callable[..., Iterator[RedisServer]]:
    """Build a pytest fixture that yields a started RedisServer and stops it afterwards."""
    if not shutil.which("redis-server") and not os.path.exists(REDIS_BIN):
        pytest.skip("redis-server is not installed", allow_module_level=True)

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        srv = RedisServer.start(tmp_path_factory.mktemp("redis"))
        try:
            yield srv
        finally:
            srv.stop()

    return _fixture


def redis_factory_fixture(scope: str = "function") -> Callable[..., Iterator[Callable[[], RedisServer]]]:
    """Build a fixture that yields a factory: call it for as many private servers as a test needs."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], RedisServer]]:
        started: list[RedisServer] = []

        def make() -> RedisServer:
            srv = RedisServer.start(tmp_path_factory.mktemp("redis"))
            started.append(srv)
            return srv

        try:
            yield make
        finally:
            for srv in started:
                srv.stop()

    return _fixture
