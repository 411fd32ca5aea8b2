"""Graceful shutdown of a real `serve` process: SIGTERM stops accepting, lets a stream in flight finish (up to
server.drain_seconds), answers /health/deep 503 meanwhile, exits 0. Also `workers: 2` behind one port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import pytest
import yaml

from otelgate.sim import SimUpstream

LISTENING = re.compile(r"otelgate listening on (http://[\d.]+:\d+) \(pid (\d+)\)")
SUPERVISOR = re.compile(r"otelgate supervisor \(pid \d+\): (\d+) workers on ([\d.]+):(\d+)")
USER = [{"role": "user", "content": "Tell me a long story."}]
STORY = " ".join(f"word{i}" for i in range(12))


class Served:
    """A `serve` subprocess whose stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            async with self._new:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._new.notify_all()

    async def wait_for(self, pattern: re.Pattern[str] | str, count: int = 1, limit: float = 20.0) -> list[str]:
        """The first `count` log lines matching `pattern` (waiting for the process to write them)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def found() -> list[str]:
            return [line for line in self.lines if regex.search(line)]

        async with asyncio.timeout(limit), self._new:
            await self._new.wait_for(lambda: len(found()) >= count or self._reader.done())
        matches = found()
        assert len(matches) >= count, f"no {regex.pattern!r} in the log:\n" + "\n".join(self.lines)
        return matches

    async def exit_code(self, limit: float = 20.0) -> int:
        async with asyncio.timeout(limit):
            code = await self.process.wait()
            await self._reader
        return code


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, sim: SimUpstream, **server: object) -> AsyncIterator[Served]:
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_seconds": 10, **server},
        "upstreams": {"anthropic": {"base_url": sim.url}, "openai": {"base_url": sim.openai_base_url}},
        "budgets": {"store": f"sqlite:///{tmp_path / 'otelgate.db'}"},
    }
    path = tmp_path / "otelgate.yaml"
    path.write_text(yaml.safe_dump(config))
    code = f"from otelgate.server import serve; from otelgate.config import load_config; " \
           f"raise SystemExit(serve(load_config({str(path)!r})))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELGATE_", "OTEL_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    served = Served(process)
    try:
        yield served
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def sim() -> AsyncIterator[SimUpstream]:
    async with SimUpstream(chunks=12) as s:
        yield s


def drip(interval: float) -> dict[str, str]:
    return {"x-sim-fault": json.dumps({"fault": "slow_drip", "interval": interval, "text": STORY})}


async def test_sigterm_lets_the_stream_in_flight_finish_and_exits_0(tmp_path: Path, sim: SimUpstream) -> None:
    async with serve(tmp_path, sim) as served:
        url = LISTENING.search((await served.wait_for(LISTENING))[0]).group(1)  # type: ignore[union-attr]
        client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as health:
            async with health.get(url + "/health") as response:  # opens the kept-alive connection
                assert response.status == 200
            text: list[str] = []
            async with client.messages.stream(
                model="claude-test", max_tokens=100, messages=USER, extra_headers=drip(0.1)
            ) as stream:
                async for chunk in stream.text_stream:
                    if not text:  # the stream is in flight: now ask the server to stop
                        served.process.send_signal(signal.SIGTERM)
                        await served.wait_for("draining")
                        async with health.get(url + "/health/deep") as response:
                            deep = await response.json()
                            assert response.status == 503
                            assert deep["checks"]["draining"] == {"ok": False}
                            assert response.headers.get("connection", "").lower() == "close"
                        port = int(url.rsplit(":", 1)[1])
                        with pytest.raises(OSError):  # the listener is closed: no new connections
                            _, writer = await asyncio.open_connection("127.0.0.1", port)
                            writer.close()
                    text.append(chunk)
            message = await stream.get_final_message()
        assert "".join(text) == STORY  # the whole answer arrived, cleanly ended
        assert message.stop_reason == "end_turn"
        assert await served.exit_code() == 0
        await served.wait_for("otelgate stopped")


async def test_drain_seconds_bounds_the_wait(tmp_path: Path, sim: SimUpstream) -> None:
    async with serve(tmp_path, sim, drain_seconds=0.5) as served:
        url = LISTENING.search((await served.wait_for(LISTENING))[0]).group(1)  # type: ignore[union-attr]
        client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
        loop = asyncio.get_running_loop()
        received: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as raised:  # cut off with an error event, never a clean end
            async with client.messages.stream(
                model="claude-test", max_tokens=100, messages=USER, extra_headers=drip(0.5)
            ) as stream:
                async for chunk in stream.text_stream:
                    if not received:
                        served.process.send_signal(signal.SIGTERM)
                        started = loop.time()
                    received.append(chunk)
        assert "shutting down" in str(raised.value)
        assert len(received) < len(STORY.split())
        assert await served.exit_code() == 0
        assert loop.time() - started < 0.5 + 3.0
        await served.wait_for("still in flight")


async def test_two_workers_share_the_port_and_stop_together(tmp_path: Path, sim: SimUpstream) -> None:
    async with serve(tmp_path, sim, workers=2) as served:
        supervisor = SUPERVISOR.search((await served.wait_for(SUPERVISOR))[0])
        assert supervisor is not None and supervisor.group(1) == "2"
        workers = await served.wait_for(LISTENING, count=2, limit=60)
        pids = {int(LISTENING.search(line).group(2)) for line in workers}  # type: ignore[union-attr]
        port = int(supervisor.group(3))
        assert {int(LISTENING.search(line).group(1).rsplit(":", 1)[1]) for line in workers} == {port}  # type: ignore[union-attr]
        client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key="sk-ant-test", max_retries=0)
        answers = await asyncio.gather(*(
            client.messages.create(model="claude-test", max_tokens=50, messages=USER) for _ in range(8)
        ))
        assert all(answer.content[0].text for answer in answers)
        served.process.send_signal(signal.SIGTERM)
        assert await served.exit_code() == 0
        await served.wait_for("otelgate stopped", count=2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
