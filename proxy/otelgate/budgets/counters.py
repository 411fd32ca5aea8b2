"""From limits to store counters: the plan both stores execute, and the results they hand back.

Each (scope, id, window) owns counters of six integers: settled usd-nano / tokens / calls and reserved
usd-nano / tokens / calls. A calendar or session window has one counter per window instance (its start is
part of the key); a rolling window has a running total plus one counter per bucket, and buckets older than
the window are subtracted from the total when the counter is next touched (amortised O(1) per request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .ledger import Amount, Limit, Refusal, UsageRow, WindowSpend, usd_to_nano
from .windows import Window

RETENTION = 86400  # calendar counters outlive their window by a day, for usage look-back
UNIT_INDEX = {"usd": 0, "tokens": 1, "calls": 2}
UNIT_NAMES = ("usd", "tokens", "calls")


def esc(s: str) -> str:
    """Keep ``|`` as the only key separator whatever an id contains."""
    return s.replace("%", "%25").replace("|", "%7C")


def registry_key(scope: str, scope_id: str, window: Window) -> str:
    return f"{esc(scope)}|{esc(scope_id)}|{window.key}"


def scope_prefix(scope: str, scope_id: str) -> str:
    return f"{esc(scope)}|{esc(scope_id)}|"


def alert_mark_prefix(scope: str, scope_id: str) -> str:
    return "alert|" + scope_prefix(scope, scope_id)


@dataclass(frozen=True)
class CounterRef:
    limit: Limit
    rk: str  # registry key: scope|id|window
    key: str  # counter key (calendar/session) or rolling total key
    rolling: bool
    bucket: int  # rolling: bucket written at the planning instant; otherwise the window start
    window_seconds: int
    bucket_seconds: int
    start: float
    end: float
    expires_at: float  # calendar: when the counter may be dropped
    sliding_ttl: int  # sessions: expiry slides to now + ttl on every touch
    limits_nano: tuple[int, int, int]  # usd-nano, tokens, calls; -1 = no limit on that unit

    def wire(self) -> dict[str, Any]:
        lu, lt, lc = self.limits_nano
        return {"k": self.key, "rk": self.rk, "r": 1 if self.rolling else 0, "b": self.bucket,
                "W": self.window_seconds, "Z": self.bucket_seconds or 1, "st": self.start, "en": self.end,
                "e": self.expires_at, "s": self.sliding_ttl, "lu": lu, "lt": lt, "lc": lc,
                "L": limit_json(self.limit)}

    @classmethod
    def from_wire(cls, w: dict[str, Any]) -> CounterRef:
        limit = limit_from_json(w["L"])
        return cls(limit=limit, rk=w["rk"], key=w["k"], rolling=bool(w["r"]), bucket=int(w["b"]),
                   window_seconds=int(w["W"]), bucket_seconds=int(w["Z"]) if w["r"] else 0,
                   start=float(w["st"]), end=float(w["en"]), expires_at=float(w["e"]),
                   sliding_ttl=int(w["s"]), limits_nano=(int(w["lu"]), int(w["lt"]), int(w["lc"])))


# A proxy sees the same few limits over and over: encode and decode each once (both are pure).
@lru_cache(maxsize=4096)
def limit_json(limit: Limit) -> str:
    return json.dumps(limit.to_dict(), separators=(",", ":"))


@lru_cache(maxsize=4096)
def limit_from_json(text: str) -> Limit:
    return Limit.from_dict(json.loads(text))


@lru_cache(maxsize=8192)
def _quoted(text: str) -> str:
    return json.dumps(text)


def ref_json(ref: CounterRef) -> str:
    """One counter reference as JSON. Day and month references are the same all day for a limit, so theirs are
    cached; rolling and session ones carry the current instant and are built each time."""
    if ref.rolling or ref.sliding_ttl:
        return _ref_json(ref)
    return _calendar_ref_json(ref)


def _ref_json(ref: CounterRef) -> str:
    """``json.dumps(ref.wire())`` with the same keys and values, built by hand: the generic encoder (escaping
    the embedded limit JSON again on every call) was ~9 % of the proxy's CPU with the Redis store. The strings
    are a handful per process, so their encodings are cached; numbers are formatted as json.dumps does."""
    lu, lt, lc = ref.limits_nano
    return (f'{{"k":{_quoted(ref.key)},"rk":{_quoted(ref.rk)},"r":{1 if ref.rolling else 0},"b":{int(ref.bucket)},'
            f'"W":{int(ref.window_seconds)},"Z":{int(ref.bucket_seconds or 1)},"st":{float(ref.start)!r},'
            f'"en":{float(ref.end)!r},"e":{float(ref.expires_at)!r},"s":{int(ref.sliding_ttl)},'
            f'"lu":{int(lu)},"lt":{int(lt)},"lc":{int(lc)},"L":{_quoted(limit_json(ref.limit))}}}')


_calendar_ref_json = lru_cache(maxsize=4096)(_ref_json)


def payload_json(refs: list[CounterRef], amt: tuple[int, int, int] | None = None) -> str:
    """The ``{"refs": [...], "amt": [...]}`` document the stores keep with a reservation (and Redis scripts read)."""
    body = ",".join(map(ref_json, refs))
    if amt is None:
        return f'{{"refs":[{body}]}}'
    return f'{{"refs":[{body}],"amt":[{int(amt[0])},{int(amt[1])},{int(amt[2])}]}}'


def read_payload(body: str) -> tuple[tuple[CounterRef, ...], list[int] | None]:
    """The counter references and amount of a stored ``payload_json`` document. The references part repeats from
    request to request (a key's day and month counters are the same all day), so it is decoded once."""
    head, sep, tail = body.rpartition(',"amt":')
    if sep and head.startswith('{"refs":[') and tail.endswith("}"):
        return _read_refs(head + "}"), json.loads(tail[:-1])
    doc = json.loads(body)
    return tuple(CounterRef.from_wire(w) for w in doc["refs"]), doc.get("amt")


@lru_cache(maxsize=4096)
def _read_refs(text: str) -> tuple[CounterRef, ...]:
    return tuple(CounterRef.from_wire(w) for w in json.loads(text)["refs"])


def merge_limits(limits: list[Limit]) -> list[Limit]:
    """Limits on the same scope/id/window share counters: keep one, with the tightest value per unit."""
    merged: dict[tuple[str, str, str], Limit] = {}
    for lim in limits:
        k = (lim.scope, lim.scope_id, lim.window.key)
        prev = merged.get(k)
        if prev is None:
            merged[k] = lim
            continue

        def tight(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else min(a, b)

        merged[k] = Limit(lim.scope, lim.scope_id, lim.window, usd=tight(prev.usd, lim.usd),
                          tokens=tight(prev.tokens, lim.tokens), calls=tight(prev.calls, lim.calls))
    return list(merged.values())


# A calendar window's reference is the same from its start to its end: built once per limit and window instance.
_calendar_refs: dict[Limit, CounterRef] = {}


def plan(limits: list[Limit], now: float) -> list[CounterRef]:
    refs = []
    for lim in merge_limits(limits):
        w = lim.window
        calendar = not w.rolling and w.kind != "session"
        if calendar:
            known = _calendar_refs.get(lim)
            if known is not None and known.start <= now < known.end:
                refs.append(known)
                continue
        rk = registry_key(lim.scope, lim.scope_id, w)
        lims = (-1 if lim.usd is None else usd_to_nano(lim.usd),
                -1 if lim.tokens is None else int(lim.tokens),
                -1 if lim.calls is None else int(lim.calls))
        if w.rolling:
            b = w.bucket_of(now)
            refs.append(CounterRef(lim, rk, rk, True, b, w.length_seconds, w.bucket_seconds,
                                   float(w.cutoff(now)), w.ages_out_at(b), now + w.length_seconds
                                   + w.bucket_seconds + 60, 0, lims))
        elif w.kind == "session":
            refs.append(CounterRef(lim, rk, f"{rk}|f|{0:012d}", False, 0, 0, 0, 0.0, now + w.ttl_seconds,
                                   now + w.ttl_seconds, w.ttl_seconds, lims))
        else:
            start, end = w.calendar_bounds(now)
            ref = CounterRef(lim, rk, f"{rk}|f|{int(start):012d}", False, int(start), 0, 0, start, end,
                             end + RETENTION, 0, lims)
            if len(_calendar_refs) >= 4096:  # unlisted pass-through keys are unbounded in number
                _calendar_refs.clear()
            _calendar_refs[lim] = ref
            refs.append(ref)
    return refs


def refusal_for(ref: CounterRef, unit_index: int, current: int, requested: int,
                rolling_reset: float | None) -> Refusal:
    unit = UNIT_NAMES[unit_index]
    lim = ref.limits_nano[unit_index]
    scale = 1e9 if unit == "usd" else 1
    kind = ref.limit.window.kind
    if kind == "session":
        reset_at, reason = None, "session"
    elif ref.rolling:
        reset_at, reason = rolling_reset, "budget"
    else:
        reset_at, reason = ref.end, "budget"
    if requested > lim:
        reset_at = None  # this request alone exceeds the limit: waiting cannot help
    return Refusal(scope=ref.limit.scope, scope_id=ref.limit.scope_id, window=ref.limit.window, unit=unit,
                   limit=lim / scale, spent=current / scale, requested=requested / scale, reset_at=reset_at,
                   reason=reason)


def window_spend(ref: CounterRef, six: list[int] | tuple[int, ...]) -> WindowSpend:
    return WindowSpend(limit=ref.limit, window_start=ref.start, window_end=ref.end,
                       spent=Amount.from_nano(six[0], six[1], six[2]),
                       reserved=Amount.from_nano(six[3], six[4], six[5]))


def usage_rows(ref: CounterRef, six: list[int] | tuple[int, ...]) -> list[UsageRow]:
    rows = []
    for i, unit in enumerate(UNIT_NAMES):
        lim = ref.limits_nano[i]
        if lim < 0:
            continue
        scale = 1e9 if unit == "usd" else 1
        spent, reserved = six[i] / scale, six[i + 3] / scale
        limit = lim / scale
        reset = None if ref.limit.window.kind == "session" else ref.end
        rows.append(UsageRow(scope=ref.limit.scope, scope_id=ref.limit.scope_id, window=ref.limit.window,
                             unit=unit, spent=spent, reserved=reserved, limit=limit,
                             remaining=max(0.0, limit - spent - reserved), window_start=ref.start,
                             reset_at=reset))
    return rows
