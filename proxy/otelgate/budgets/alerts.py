"""Usage alerts: after each settle, report each utilisation threshold a budget window crosses, once.

"Once" is decided in the store (``Ledger.claim_once``), so several replicas emit one alert per threshold
per window instance (a calendar day or month; a session's life; for a rolling N-hour window, each
consecutive N-hour period). Events come back to the caller (telemetry makes a span event and a log line
of them); with ``alertmanager_url`` they are also posted to Alertmanager's v2 API in the background, with
a timeout, so a slow or absent Alertmanager never delays a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .counters import alert_mark_prefix
from .ledger import Ledger, SettleResult, WindowSpend, _fmt_value
from .windows import Window

log = logging.getLogger("otelgate.budgets.alerts")
DEFAULT_THRESHOLDS = (0.5, 0.8, 1.0)
ALERT_NAME = "OtelgateBudgetThreshold"


@dataclass(frozen=True)
class AlertEvent:
    scope: str
    scope_id: str
    window: Window
    unit: str
    threshold: float
    utilisation: float
    spent: float
    limit: float
    window_start: float
    window_end: float

    @property
    def severity(self) -> str:
        return "critical" if self.threshold >= 1.0 else "warning"

    def summary(self) -> str:
        who = "all keys" if self.scope == "global" else f"{self.scope} {self.scope_id}"
        what = "session limit" if self.window.kind == "session" else f"{self.window.describe()} budget"
        return f"{who} used {self.utilisation:.0%} of its {what} of {_fmt_value(self.unit, self.limit)}"

    def description(self) -> str:
        return (f"{self.summary()} ({_fmt_value(self.unit, self.spent)} spent; threshold "
                f"{self.threshold:.0%}; window {self.window.key} ends "
                f"{datetime.fromtimestamp(self.window_end, UTC):%Y-%m-%d %H:%M} UTC)")

    def to_alertmanager(self, now: float, generator_url: str | None = None) -> dict[str, Any]:
        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        alert: dict[str, Any] = {
            "labels": {"alertname": ALERT_NAME, "severity": self.severity, "scope": self.scope,
                       "id": self.scope_id, "window": self.window.key, "unit": self.unit,
                       "threshold": f"{self.threshold:g}"},
            "annotations": {"summary": self.summary(), "description": self.description()},
            "startsAt": iso(now),
            "endsAt": iso(max(self.window_end, now + 60)),
        }
        if generator_url:
            alert["generatorURL"] = generator_url
        return alert


def _period(spend: WindowSpend, now: float) -> tuple[int, float]:
    """(instance id for dedup, seconds the dedup mark must live)."""
    w = spend.limit.window
    if w.rolling:
        n = w.length_seconds
        return int(now // n) * n, float(n)
    if w.kind == "session":
        return 0, float(w.ttl_seconds)
    return int(spend.window_start), max(60.0, spend.window_end - now + 60)


class BudgetAlerter:
    def __init__(self, ledger: Ledger, thresholds: tuple[float, ...] | list[float] = DEFAULT_THRESHOLDS,
                 alertmanager_url: str | None = None, timeout: float = 2.0,
                 generator_url: str | None = None) -> None:
        self.ledger = ledger
        self.thresholds = tuple(sorted(float(t) for t in thresholds))
        self.alertmanager_url = alertmanager_url.rstrip("/") if alertmanager_url else None
        self.timeout = timeout
        self.generator_url = generator_url
        self._session: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.post_failures = 0

    async def check(self, result: SettleResult, now: float | None = None) -> list[AlertEvent]:
        """Events for thresholds first crossed by this settle (several if one call jumped past several)."""
        if not result.applied:
            return []
        now = time.time() if now is None else now
        events: list[AlertEvent] = []
        for spend in result.spends:
            for unit in ("usd", "tokens", "calls"):
                util = spend.utilisation(unit)
                if util is None:
                    continue
                crossed = [t for t in self.thresholds if util >= t]
                if not crossed:
                    continue
                instance, ttl = _period(spend, now)
                lim = spend.limit
                base = f"{alert_mark_prefix(lim.scope, lim.scope_id)}{lim.window.key}|{instance}|{unit}|"
                for t in crossed:
                    if not await self.ledger.claim_once(f"{base}{t:g}", ttl):
                        continue
                    end = now + ttl if lim.window.kind in ("hours", "session") else spend.window_end
                    events.append(AlertEvent(lim.scope, lim.scope_id, lim.window, unit, t, util,
                                             spend.spent.get(unit), float(lim.value(unit) or 0.0),
                                             float(instance), end))
        if events and self.alertmanager_url:
            task = asyncio.create_task(self._post(events, now))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return events

    async def _post(self, events: list[AlertEvent], now: float) -> None:
        assert self.alertmanager_url is not None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = [e.to_alertmanager(now, self.generator_url) for e in events]
        try:
            async with self._session.post(f"{self.alertmanager_url}/api/v2/alerts", json=body) as resp:
                if resp.status >= 300:
                    self.post_failures += 1
                    log.warning("alertmanager answered %s: %s", resp.status, (await resp.text())[:200])
        except (aiohttp.ClientError, TimeoutError) as e:
            self.post_failures += 1
            log.warning("could not post %d budget alerts to alertmanager: %s", len(body), e)

    async def drain(self) -> None:
        """Wait for posts in flight (each is bounded by ``timeout``)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if self._session is not None:
            await self._session.close()
