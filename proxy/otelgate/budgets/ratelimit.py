"""Token-bucket rate limits (requests and tokens per minute) as pure functions over stored state.

A bucket holds up to one minute's allowance (``capacity`` = the per-minute limit) and refills
continuously at ``capacity / 60`` per second, so a key may burst a full minute's worth and then proceeds
at the steady rate. A request takes 1 from the request bucket and ``tokens`` from the token bucket, both
or neither. The Redis store runs the same arithmetic in Lua.
"""

from __future__ import annotations

from .ledger import Refusal
from .windows import Window


def refill(level: float | None, at: float | None, capacity: float, now: float) -> float:
    if level is None or at is None:
        return float(capacity)
    return min(float(capacity), level + max(0.0, now - at) * capacity / 60.0)


def check(key_id: str, levels: dict[str, float], caps: dict[str, float], needs: dict[str, float],
          now: float) -> Refusal | None:
    """Refusal for the first bucket that cannot give ``needs[unit]`` now, else None."""
    for unit in ("requests", "tokens"):
        cap = caps.get(unit)
        if cap is None:
            continue
        need, level = needs[unit], levels[unit]
        if need <= level:
            continue
        reset = None if need > cap else now + (need - level) * 60.0 / cap
        return Refusal(scope="key", scope_id=key_id, window=Window.minute(), unit=unit, limit=float(cap),
                       spent=float(cap) - level, requested=float(need), reset_at=reset, reason="rate_limit")
    return None
