"""Redis ledger: every replica enforces the same budgets through atomic Lua scripts.

Layout under the key prefix (default ``og:``): ``c:<counter>`` hashes of six integers (plus ``:z`` bucket
index and ``:b:<start>`` buckets for rolling windows), ``r:<request>`` reservations with ``rexp`` (a sorted
set by expiry, swept by every reserve), ``d:<request>`` settled marks (idempotency, with a TTL),
``l:<scope|id|window>`` + ``lidx`` the limits seen (for ``usage()``), ``m:<mark>`` alert marks,
``q:<key|unit>`` rate-limit buckets. Every key carries an expiry, so an abandoned budget cleans itself up.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from . import ratelimit
from .counters import (
    CounterRef,
    alert_mark_prefix,
    payload_json,
    plan,
    read_payload,
    refusal_for,
    scope_prefix,
    usage_rows,
    window_spend,
)
from .ledger import Amount, Ledger, Limit, RateAsk, Refusal, Reservation, SettleResult, UsageRow
from .redis_lua import RATE as RATE_LUA
from .redis_lua import READ, RELEASE, RESERVE, RESET, SETTLE

_payload = payload_json


def _registry_expiry(ref: CounterRef, now: float) -> float:
    """When the registry entry a reserve writes for ``ref`` expires (as the RESERVE script computes it)."""
    return now + ref.sliding_ttl if ref.sliding_ttl else max(ref.expires_at, now + ref.window_seconds)

MAX_PIPELINE = 256  # script calls per pipeline: bounds one write and the time Redis is busy with it
REGISTER_EVERY = 60.0  # seconds a process may skip re-registering a limit it registered


class RedisLedger(Ledger):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "og:",
                 reservation_ttl: float = 900.0, settled_ttl: float = 2 * 86400,
                 socket_timeout: float = 2.0, client: aioredis.Redis | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.reservation_ttl = float(reservation_ttl)
        self.settled_ttl = int(settled_ttl)
        self._r = client or aioredis.Redis.from_url(url, socket_timeout=socket_timeout,
                                                    socket_connect_timeout=socket_timeout,
                                                    decode_responses=True)
        self._scripts = {name: self._r.register_script(src)
                         for name, src in (("reserve", RESERVE), ("settle", SETTLE), ("release", RELEASE),
                                           ("rate", RATE_LUA), ("read", READ), ("reset", RESET))}
        # Script calls waiting for the next pipeline, and the pipeline on the wire (at most one at a time).
        self._pending: list[tuple[AsyncScript, list[Any], asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._flush_soon = False
        self._registered_at: dict[str, tuple[float, float]] = {}  # rk -> (monotonic, expiry) of our last write

    async def _run(self, name: str, *args: Any) -> Any:
        """Run one of the ledger's scripts. Calls made while a pipeline is on the wire (or in the same turn of the
        event loop) go to Redis together as the next pipeline: one write and one read for the lot instead of a
        round trip each, like the SQLite ledger's group commit. Each script still runs atomically on its own, and
        in the order asked: a usage read sees every settle this process asked for before it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((self._scripts[name], list(args), future))
        if self._flushing is None and not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        self._flush_soon = False
        # A call whose caller gave up (timed out) before it reached the wire is not sent: the caller has already
        # acted on the failure (a settle, for one, is journaled and replayed later).
        self._pending = [call for call in self._pending if not call[2].done()]
        if self._flushing is None and self._pending:
            batch, self._pending = self._pending[:MAX_PIPELINE], self._pending[MAX_PIPELINE:]
            self._flushing = asyncio.get_running_loop().create_task(self._flush(batch))

    async def _flush(self, batch: list[tuple[AsyncScript, list[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._pipeline(batch)
            # A server that forgot the scripts (restart, SCRIPT FLUSH) learns them again and runs just those.
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for script in {batch[i][0] for i in missing}:
                    await self._r.script_load(script.script)
                for i, result in zip(missing, await self._pipeline([batch[i] for i in missing]), strict=True):
                    results[i] = result
        except BaseException as exc:  # the connection failed: every call in the pipeline hears of it
            error = exc if isinstance(exc, Exception) else ConnectionError("redis pipeline cancelled")
            for _script, _args, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_script, _args, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller gave up (timeout): the script ran or not, the ledger is idempotent
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._flushing = None
            if self._pending:
                self._start_flush()

    async def _pipeline(self, batch: list[tuple[AsyncScript, list[Any], asyncio.Future[Any]]]) -> list[Any]:
        pipe = self._r.pipeline(transaction=False)
        for script, args, _future in batch:
            pipe.evalsha(script.sha, 0, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def reserve(self, request_id: str, limits: list[Limit], amount: Amount,
                      now: float | None = None, rate: RateAsk | None = None) -> Reservation | Refusal:
        now = time.time() if now is None else now
        refs = plan(limits, now)
        amt = amount.to_nano()
        args: list[Any] = [self.prefix, repr(now), request_id, repr(self.reservation_ttl), _payload(refs, amt)]
        if rate is not None and (rate.rpm is not None or rate.tpm is not None):
            args += [rate.key_id, -1 if rate.rpm is None else rate.rpm, -1 if rate.tpm is None else rate.tpm,
                     int(rate.tokens)]
        else:
            args += ["", -1, -1, 0]
        register = self._should_register(refs, now)
        args.append("1" if register else "0")
        out = await self._run("reserve", *args)
        code = int(out[0])
        if code == 1:
            if register:
                self._note_registered(refs, now)
            return Reservation(request_id, amount, tuple(limits), float(out[1]))
        if code == 2:
            raise ValueError(f"request {request_id!r} was already settled")
        if code == 3:
            assert rate is not None
            return self._rate_refusal(rate.key_id, rate.rpm, rate.tpm, rate.tokens, out, now)
        ref, u = refs[int(out[1]) - 1], int(out[2]) - 1
        reset = float(out[4])
        return refusal_for(ref, u, int(out[3]), amt[u], None if reset < 0 else reset)

    def _should_register(self, refs: list[CounterRef], now: float) -> bool:
        """Whether a reserve must (re)write the limits registry (it only feeds usage listings). Not when this
        process wrote the same limits within the last minute with an expiry at most a minute short: four to
        sixteen Redis commands fewer per request."""
        mono = time.monotonic()
        for ref in refs:
            seen = self._registered_at.get(ref.rk)
            if seen is None or mono - seen[0] >= REGISTER_EVERY \
                    or seen[1] < _registry_expiry(ref, now) - REGISTER_EVERY:
                return True
        return False

    def _note_registered(self, refs: list[CounterRef], now: float) -> None:
        if len(self._registered_at) > 10_000:
            self._registered_at.clear()
        mono = time.monotonic()
        for ref in refs:
            self._registered_at[ref.rk] = (mono, _registry_expiry(ref, now))

    async def settle(self, request_id: str, actual: Amount, limits: list[Limit] | None = None,
                     now: float | None = None) -> SettleResult:
        now = time.time() if now is None else now
        fallback = plan(limits or [], now)
        u, t, c = actual.to_nano()
        out = await self._run("settle", self.prefix, repr(now), request_id, str(self.settled_ttl),
                             f"[{u},{t},{c}]", _payload(fallback))
        if int(out[0]) == 0:
            return SettleResult(request_id, False)
        body = out[1]
        refs = fallback if body in ("", "=") else read_payload(body)[0]
        vals = [int(x) for x in out[2:]]
        spends = tuple(window_spend(ref, vals[6 * i:6 * i + 6]) for i, ref in enumerate(refs))
        return SettleResult(request_id, True, spends)

    async def _release(self, request_id: str, now: float) -> bool:
        return bool(int(await self._run("release", self.prefix, repr(now), request_id)))

    async def _registered(self, scope: str | None, scope_id: str | None, now: float) -> list[Limit]:
        idx = self.prefix + "lidx"
        await self._r.zremrangebyscore(idx, "-inf", f"({now}")
        rks = await self._r.zrangebyscore(idx, now, "+inf")
        if scope is not None and scope_id is not None:
            p = scope_prefix(scope, scope_id)
            rks = [k for k in rks if k.startswith(p)]
        if not rks:
            return []
        specs = await self._r.mget([self.prefix + "l:" + k for k in rks])
        out = [Limit.from_dict(json.loads(s)) for s in specs if s]
        return [x for x in out if scope is None or x.scope == scope]

    async def usage(self, scope: str | None = None, scope_id: str | None = None, *,
                    limits: list[Limit] | None = None, now: float | None = None) -> list[UsageRow]:
        now = time.time() if now is None else now
        lims = limits if limits is not None else await self._registered(scope, scope_id, now)
        refs = plan(lims, now)
        if not refs:
            return []
        vals = [int(x) for x in await self._run("read", self.prefix, repr(now), _payload(refs))]
        rows: list[UsageRow] = []
        for i, ref in enumerate(refs):
            rows.extend(usage_rows(ref, vals[6 * i:6 * i + 6]))
        return rows

    async def reset(self, scope: str, scope_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        refs = plan(await self._registered(scope, scope_id, now), now)
        if refs:
            await self._run("reset", self.prefix, repr(now), _payload(refs))
        pattern = self.prefix + "m:" + alert_mark_prefix(scope, scope_id).replace("[", r"\[") + "*"
        async for k in self._r.scan_iter(match=pattern, count=500):
            await self._r.delete(k)

    async def rate_limit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int = 0,
                         now: float | None = None) -> Refusal | None:
        if rpm is None and tpm is None:
            return None
        now = time.time() if now is None else now
        out = await self._run("rate", self.prefix, repr(now), key_id, -1 if rpm is None else rpm,
                             -1 if tpm is None else tpm, int(tokens))
        if int(out[0]) == 1:
            return None
        return self._rate_refusal(key_id, rpm, tpm, tokens, out, now)

    @staticmethod
    def _rate_refusal(key_id: str, rpm: int | None, tpm: int | None, tokens: int, out: list[Any],
                      now: float) -> Refusal:
        unit = ("requests", "tokens")[int(out[1]) - 1]
        caps = {"requests": rpm, "tokens": tpm}
        refusal = ratelimit.check(key_id, {unit: float(out[2])}, {unit: caps[unit]},
                                  {"requests": 1.0, "tokens": float(tokens)}, now)
        assert refusal is not None  # the script refused, so the same arithmetic does
        return refusal

    async def claim_once(self, mark: str, ttl_seconds: float) -> bool:
        return bool(await self._r.set(self.prefix + "m:" + mark, "1", nx=True, px=max(1, int(ttl_seconds * 1000))))

    async def remember(self, name: str, value: str, ttl_seconds: float) -> None:
        await self._r.set(self.prefix + "n:" + name, value, px=max(1, int(ttl_seconds * 1000)))

    async def recall(self, name: str) -> str | None:
        value = await self._r.get(self.prefix + "n:" + name)
        return str(value) if value is not None else None

    async def ping(self) -> None:
        await self._r.ping()

    async def close(self) -> None:
        while self._flushing is not None or self._pending:  # what was asked still gets its answer
            if self._flushing is None:
                self._start_flush()
            if self._flushing is not None:
                await asyncio.shield(self._flushing)
        await self._r.aclose()
