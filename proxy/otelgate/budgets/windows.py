"""Budget windows: calendar (day, month), rolling (N hours, bucketed) and session (sliding TTL).

A window answers three questions for an instant ``now``: which counter holds the spend (its start), when
that spend stops counting (its end / reset) and, for rolling windows, which buckets are still inside.
All instants are epoch seconds (float); calendar boundaries are computed in the window's IANA timezone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

# Rolling windows keep at most this many buckets, so a check sums a bounded number of rows whatever N is.
MAX_BUCKETS = 360
MIN_BUCKET_SECONDS = 60


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {}  # (kind, tz) -> the current calendar window


@dataclass(frozen=True)
class Window:
    """When spend counts. Build with ``Window.day()``, ``.month()``, ``.hours(n)``, ``.session(ttl)``."""

    kind: str  # "day" | "month" | "hours" | "session" | "minute" (rate limits)
    tz: str = "UTC"
    hours_n: int = 0
    ttl_seconds: int = 0

    @classmethod
    def day(cls, tz: str = "UTC") -> Window:
        _zone(tz)  # fail early on an unknown IANA name
        return cls("day", tz=tz)

    @classmethod
    def month(cls, tz: str = "UTC") -> Window:
        _zone(tz)
        return cls("month", tz=tz)

    @classmethod
    def hours(cls, n: int) -> Window:
        if int(n) != n or n < 1:
            raise ValueError(f"rolling window needs a whole number of hours >= 1, got {n!r}")
        return cls("hours", hours_n=int(n))

    @classmethod
    def session(cls, ttl_seconds: int = 86400) -> Window:
        if ttl_seconds < 1:
            raise ValueError("session ttl must be positive")
        return cls("session", ttl_seconds=int(ttl_seconds))

    @classmethod
    def minute(cls) -> Window:
        """The per-minute window of rate limits (token bucket); not usable as a budget window."""
        return cls("minute")

    # -- identity -------------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """A stable, store-safe name: part of every counter key."""
        if self.kind in ("day", "month"):
            return f"{self.kind}@{self.tz}"
        if self.kind == "hours":
            return f"hours:{self.hours_n}"
        if self.kind == "session":
            return f"session:{self.ttl_seconds}"
        return self.kind

    @classmethod
    def from_key(cls, key: str) -> Window:
        if key.startswith(("day@", "month@")):
            kind, tz = key.split("@", 1)
            return cls(kind, tz=tz)
        if key.startswith("hours:"):
            return cls.hours(int(key.split(":", 1)[1]))
        if key.startswith("session:"):
            return cls.session(int(key.split(":", 1)[1]))
        return cls(key)

    @property
    def rolling(self) -> bool:
        return self.kind == "hours"

    @property
    def length_seconds(self) -> int:
        return self.hours_n * 3600 if self.kind == "hours" else 0

    @property
    def bucket_seconds(self) -> int:
        """Precision of a rolling window: spend ages out at most one bucket late (never early)."""
        if self.kind != "hours":
            return 0
        return max(MIN_BUCKET_SECONDS, math.ceil(self.length_seconds / MAX_BUCKETS))

    # -- boundaries -----------------------------------------------------------------------------------
    def calendar_bounds(self, now: float) -> tuple[float, float]:
        """[start, end) of the day or month that contains ``now``, in the window's timezone."""
        # Every reserve asks for every limit's bounds: reuse them until the window rolls over (building them with
        # zoneinfo was 3 % of the proxy's CPU).
        cached = _BOUNDS.get((self.kind, self.tz))
        if cached is not None and cached[0] <= now < cached[1]:
            return cached
        bounds = self._calendar_bounds(now)
        _BOUNDS[(self.kind, self.tz)] = bounds
        return bounds

    def _calendar_bounds(self, now: float) -> tuple[float, float]:
        zone = _zone(self.tz)
        local = datetime.fromtimestamp(now, zone)
        if self.kind == "day":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            # Adding a day to a naive date then re-attaching the zone keeps DST days 23 or 25 h long.
            nxt = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
        elif self.kind == "month":
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            y, m = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
            nxt = start.replace(tzinfo=None, year=y, month=m).replace(tzinfo=zone)
        else:
            raise ValueError(f"{self.kind} is not a calendar window")
        return start.timestamp(), nxt.timestamp()

    def bucket_of(self, now: float) -> int:
        z = self.bucket_seconds
        return int(now // z) * z

    def cutoff(self, now: float) -> int:
        """Oldest bucket start still inside the rolling window at ``now`` (inclusive)."""
        z = self.bucket_seconds
        return int((now - self.length_seconds) // z) * z

    def ages_out_at(self, bucket_start: int) -> float:
        """When spend recorded in ``bucket_start`` stops counting."""
        return float(bucket_start + self.bucket_seconds + self.length_seconds)

    def describe(self) -> str:
        """Adjective used in refusal messages: 'daily', 'monthly', '24-hour', 'session'."""
        if self.kind == "day":
            return "daily"
        if self.kind == "month":
            return "monthly"
        if self.kind == "hours":
            return f"{self.hours_n}-hour"
        return self.kind
