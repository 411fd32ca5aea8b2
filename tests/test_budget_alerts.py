"""Usage alerts: thresholds crossed once per window across replicas, posted to a REAL Alertmanager whose
webhook receiver is an aiohttp server in this test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from otelgate.budgets import Amount, BudgetAlerter, Limit, SqliteLedger, Window
from redisutil import free_port

AM_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
T0 = datetime(2026, 11, 26, 15, 30, tzinfo=UTC).timestamp()


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    led = SqliteLedger(str(tmp_path / "alerts.db"))
    yield led
    await led.close()


async def test_thresholds_fire_once_per_window_across_replicas(ledger: SqliteLedger) -> None:
    lim = Limit("key", "team-a", Window.day(), usd=10.0)
    a, b = BudgetAlerter(ledger), BudgetAlerter(ledger)  # two replicas sharing one store

    async def spend(alerter: BudgetAlerter, rid: str, usd: float, now: float = T0) -> list[tuple[float, str]]:
        res = await ledger.settle(rid, Amount(usd, 0, 1), limits=[lim], now=now)
        return [(e.threshold, e.severity) for e in await alerter.check(res, now=now)]

    assert await spend(a, "1", 4.0) == []
    assert await spend(b, "2", 1.5) == [(0.5, "warning")]
    assert await spend(a, "3", 0.1) == []
    assert await spend(a, "4", 5.0) == [(0.8, "warning"), (1.0, "critical")]  # one jump, two thresholds
    assert await spend(b, "5", 1.0) == []
    # the next day is a new window
    assert await spend(a, "6", 6.0, now=T0 + 86400) == [(0.5, "warning")]
    ev = (await a.check(await ledger.settle("7", Amount(1.0), limits=[lim], now=T0 + 86400), now=T0 + 86400))
    assert ev == []


async def test_event_fields_and_alert_body(ledger: SqliteLedger) -> None:
    lim = Limit("session", "abc", Window.session(3600), calls=4)
    alerter = BudgetAlerter(ledger, thresholds=[0.75])
    for i in range(3):
        events = await alerter.check(await ledger.settle(str(i), Amount(0.01, 5, 1), limits=[lim], now=T0),
                                     now=T0)
    (e,) = events
    assert (e.scope, e.scope_id, e.unit, e.threshold, e.spent, e.limit) == ("session", "abc", "calls", 0.75, 3, 4)
    assert e.utilisation == pytest.approx(0.75)
    assert e.summary() == "session abc used 75% of its session limit of 4 calls"
    body = e.to_alertmanager(T0)
    assert body["labels"] == {"alertname": "OtelgateBudgetThreshold", "severity": "warning", "scope": "session",
                              "id": "abc", "window": "session:3600", "unit": "calls", "threshold": "0.75"}
    assert body["endsAt"] == "2026-11-26T16:30:00.000000Z"


async def test_post_never_blocks_the_request(ledger: SqliteLedger) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # accept, read, never answer
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    alerter = BudgetAlerter(ledger, alertmanager_url=f"http://127.0.0.1:{port}", timeout=2.0)
    lim = Limit("key", "k", Window.day(), usd=1.0)
    try:
        t = time.monotonic()
        events = await alerter.check(await ledger.settle("x", Amount(1.0), limits=[lim]))
        # Returned well before the 2 s post timeout: the request path never waits on Alertmanager.
        assert len(events) == 3 and time.monotonic() - t < 1.0
        await asyncio.wait_for(alerter.drain(), 6)
        assert alerter.post_failures == 1
    finally:
        await alerter.close()
        server.close()


# -- a real Alertmanager ----------------------------------------------------------------------------------
@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.extend((await request.json())["alerts"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", received
    await runner.cleanup()


def start_alertmanager(cfg: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    assert AM_BIN is not None
    port = free_port()
    proc = subprocess.Popen([AM_BIN, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError("alertmanager exited")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("alertmanager did not become ready")
        time.sleep(0.05)


@pytest.fixture
async def alertmanager(tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]) -> AsyncIterator[str]:
    if AM_BIN is None:
        pytest.skip("prometheus-alertmanager is not installed")
    cfg = tmp_path / "am.yml"
    cfg.write_text(f"""
route:
  receiver: hook
  group_by: [alertname, scope, id, window, unit, threshold]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {webhook[0]}
        send_resolved: false
""")
    proc, url = await asyncio.to_thread(start_alertmanager, cfg, tmp_path)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_alertmanager_receives_threshold_alerts(
        ledger: SqliteLedger, alertmanager: str, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    alerter = BudgetAlerter(ledger, alertmanager_url=alertmanager, timeout=2.0)
    lim = Limit("key", "support-bot", Window.day(), usd=10.0)
    try:
        assert len(await alerter.check(await ledger.settle("a", Amount(6.0), limits=[lim]))) == 1
        assert len(await alerter.check(await ledger.settle("b", Amount(4.5), limits=[lim]))) == 2
        await alerter.drain()
        assert alerter.post_failures == 0
        received = webhook[1]
        deadline = time.monotonic() + 15
        while len({a["labels"]["threshold"] for a in received}) < 3:
            assert time.monotonic() < deadline, f"webhook got only {received}"
            await asyncio.sleep(0.05)
    finally:
        await alerter.close()
    by_threshold = {a["labels"]["threshold"]: a for a in received}
    assert set(by_threshold) == {"0.5", "0.8", "1"}
    crit = by_threshold["1"]
    assert crit["status"] == "firing"
    assert crit["labels"] == {"alertname": "OtelgateBudgetThreshold", "severity": "critical", "scope": "key",
                              "id": "support-bot", "window": "day@UTC", "unit": "usd", "threshold": "1"}
    assert crit["annotations"]["summary"] == "key support-bot used 105% of its daily budget of $10.00"
    assert by_threshold["0.5"]["labels"]["severity"] == "warning"
