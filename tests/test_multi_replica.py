"""Two otelgate replicas behind a (simulated) load balancer share budgets and rate limits through one Redis.

Real processes throughout: a redis-server, the simulated upstream and two `python -m otelgate serve` processes
with the same config. Agents (the official Anthropic SDK) alternate between the replicas, as a round-robin load
balancer would send them. What one replica admits, the other sees: a daily budget or a requests-per-minute limit
allows no more in total across both than one process alone (docs/scaling.md, docs/budgets.md "The overspend
bound"). Both export telemetry to one OTLP receiver standing in for the Collector, as one service with two
instances.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml

from otelgate.config import key_hash
from otlp_receiver import OtlpReceiver
from redisutil import RedisServer, redis_fixture

redis_server = redis_fixture(scope="module")

ADMIN = "admin-multi-replica-0123456789"
MODEL = "replica-model"
PRICE = {"input": 1000.0, "output": 1000.0}  # $0.001 per token
# Every answer: 10 input + 5 output tokens = $0.015; the worst case reserved first is about $0.02.
FIXED = json.dumps({"text": "one two three four five", "usage": {"input_tokens": 10, "output_tokens": 5}})
DAILY_USD = 0.30
RPM = 6
KEYS = {name: f"sk-ant-{name}-SECRET" for name in ("alone", "shared", "burst", "paced", "traced", "continued")}
SESSION_CALLS = 3
LISTENING = re.compile(r"otelgate listening on (http://[\d.]+:\d+)")
SIM_LISTENING = re.compile(r"(http://127\.0\.0\.1:\d+)")


class Proc:
    """A subprocess whose stderr+stdout is read on a thread; `wait_for` blocks until a line matches."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], limit: float = 30.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := pattern.search(line))), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self.proc.poll() is not None, limit)
            match = found()
        assert match, f"{pattern.pattern!r} never appeared; output:\n" + "\n".join(self.lines)
        return match

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _config(redis_url: str, sim_url: str) -> dict[str, Any]:
    budget = [{"window": "day", "usd": DAILY_USD}]
    keys: list[dict[str, Any]] = [
        {"id": name, "key_sha256": key_hash(secret), "budgets": budget}
        for name, secret in KEYS.items() if name not in ("paced", "traced", "continued")
    ]
    keys.append({"id": "continued", "key_sha256": key_hash(KEYS["continued"]),
                 "limits": {"session": {"max_calls": SESSION_CALLS}}})
    keys.append({"id": "traced", "key_sha256": key_hash(KEYS["traced"])})
    keys.append({"id": "paced", "key_sha256": key_hash(KEYS["paced"]), "limits": {"requests_per_minute": RPM}})
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"mode": "virtual_keys", "admin_key": ADMIN},
        "upstreams": {"anthropic": {"base_url": sim_url, "api_key": "sk-upstream", "retry": {"max_attempts": 1}},
                      "openai": {"base_url": sim_url + "/v1", "api_key": "sk-upstream", "retry": {"max_attempts": 1}}},
        "keys": keys,
        # Two processes under test on a shared machine: the store call may wait for its turn (docs/budgets.md).
        "budgets": {"store": redis_url, "store_timeout": 5.0, "pricing": {MODEL: PRICE}},
        "screening": {"mode": "off"},
        "telemetry": {"prometheus": False},
    }


class Collector:
    """The OTLP receiver standing in for the Collector, on its own event loop in a thread (the replicas are
    module-scoped; each test has its own loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rx = OtlpReceiver()
        asyncio.run_coroutine_threadsafe(self.rx.__aenter__(), self.loop).result(10)

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(self.rx.wait_for(predicate, timeout), self.loop).result()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.rx.__aexit__(None, None, None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def replicas(redis_server: RedisServer, collector: Collector,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two replicas with one config (one Redis, one Collector), and the simulated upstream they both call."""
    work = tmp_path_factory.mktemp("replicas")
    started: list[Proc] = []
    try:
        sim = Proc([sys.executable, "-m", "otelgate.sim", "--port", "0", "--chunks", "2"], work)
        started.append(sim)
        sim_url = sim.wait_for(SIM_LISTENING).group(1)
        path = work / "otelgate.yaml"
        path.write_text(yaml.safe_dump(_config(redis_server.url, sim_url)))
        # Short export delays so the test need not wait the SDK's default 5 s for a batch.
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.rx.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BLRP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "gateway"}
        for _ in range(2):
            started.append(Proc([sys.executable, "-m", "otelgate", "serve", "--config", str(path)], work, otel))
        yield [proc.wait_for(LISTENING).group(1) for proc in started[1:]]
    finally:
        for proc in started:
            proc.stop()


def _client(url: str, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=KEYS[key], max_retries=0,
                                    default_headers={"x-sim-fault": FIXED})


async def _ask(client: anthropic.AsyncAnthropic, model: str = MODEL) -> int:
    """200 when served; the refusal's status otherwise."""
    try:
        await client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        return 200
    except anthropic.APIStatusError as exc:
        assert exc.status_code == 429, exc
        return exc.status_code


async def _until_refused(clients: list[anthropic.AsyncAnthropic], cap: int = 60) -> tuple[int, int]:
    """Sequential calls, round-robin over the clients, until one is refused: (served, index of the refusing one)."""
    for n in range(cap):
        if await _ask(clients[n % len(clients)]) != 200:
            return n, n % len(clients)
    raise AssertionError(f"no refusal within {cap} calls")


async def _spent(url: str, key: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(
        f"{url}/admin/usage", params={"scope": "key", "id": key}, headers={"x-admin-key": ADMIN}
    ) as response:
        assert response.status == 200, await response.text()
        rows = (await response.json())["usage"]
    usd = next(r for r in rows if r["id"] == key and r["unit"] == "usd")
    return {"spent": usd["spent"], "reserved": usd["reserved"]}


async def test_a_daily_budget_holds_across_replicas(replicas: list[str]) -> None:
    one, two = replicas
    # What one process alone allows for this budget, measured rather than assumed.
    alone = [_client(one, "alone")]
    served_alone, _ = await _until_refused(alone)
    # The same budget with every other call on the other replica.
    shared = [_client(one, "shared"), _client(two, "shared")]
    served_shared, refused_by = await _until_refused(shared)
    assert 0.5 * DAILY_USD / 0.02 < served_alone < DAILY_USD / 0.015 + 1
    assert served_shared == served_alone
    # The replica that did not refuse knows too: it refuses the next call without asking the upstream.
    assert await _ask(shared[1 - refused_by]) == 429
    for url in (one, two):  # both replicas read the same books
        usage = await _spent(url, "shared")
        assert usage == pytest.approx({"spent": 0.015 * served_shared, "reserved": 0.0})
        assert usage["spent"] <= DAILY_USD
    for client in alone + shared:
        await client.close()


async def test_concurrent_agents_on_both_replicas_stay_within_the_budget(replicas: list[str]) -> None:
    # 40 agents at once, half on each replica, for a budget that fits about 15 at the worst case: the reserve is
    # atomic in Redis, so neither replica can admit on money the other has already promised.
    clients = [_client(replicas[n % 2], "burst") for n in range(40)]
    results = await asyncio.gather(*(_ask(c) for c in clients))
    served = results.count(200)
    usage = await _spent(replicas[0], "burst")
    assert usage["spent"] <= DAILY_USD + 1e-9
    assert usage["spent"] == pytest.approx(0.015 * served)
    assert usage["reserved"] == 0
    assert 1 <= served < DAILY_USD / 0.015 + 1
    for client in clients:
        await client.close()


async def test_a_rate_limit_holds_across_replicas(replicas: list[str]) -> None:
    # RPM requests per minute: a bucket of RPM that refills at RPM/60 per second. Alone, one process lets RPM
    # through in a burst; two replicas that did not share the bucket would let 2 x RPM through.
    clients = [_client(replicas[0], "paced"), _client(replicas[1], "paced")]
    started = time.monotonic()
    results = [await _ask(clients[n % 2]) for n in range(2 * RPM)]
    elapsed = time.monotonic() - started
    served = results.count(200)
    assert RPM <= served <= RPM + int(elapsed * RPM / 60)
    assert results[:RPM] == [200] * RPM
    for client in clients:
        await client.close()


async def test_a_responses_run_that_continues_on_the_other_replica_stays_one_session(replicas: list[str]) -> None:
    """A Responses agent that carries on with `previous_response_id` sends only the new items: no user message to
    hash. The replica that answered a turn shares which session it belonged to through the store, so the next
    turn, sent to the other replica by the load balancer, is the same run and the session cap holds."""
    clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEYS["continued"], max_retries=0,
                                  default_headers={"x-sim-fault": FIXED}) for url in replicas]
    try:
        answer = await clients[0].responses.create(model=MODEL, input="Count the files.", max_output_tokens=10)
        for n in range(1, SESSION_CALLS):
            output = [{"type": "function_call_output", "call_id": f"call_{n}", "output": "42"}]
            answer = await clients[n % 2].responses.create(model=MODEL, input=output, previous_response_id=answer.id,
                                                           max_output_tokens=10)
        with pytest.raises(openai.RateLimitError) as err:
            await clients[SESSION_CALLS % 2].responses.create(
                model=MODEL, input=[{"type": "function_call_output", "call_id": "call_9", "output": "42"}],
                previous_response_id=answer.id, max_output_tokens=10)
        assert f"session limit of {SESSION_CALLS} calls" in err.value.message
    finally:
        for client in clients:
            await client.close()


async def test_both_replicas_report_to_one_collector_as_two_instances(
    replicas: list[str], collector: Collector
) -> None:
    clients = [_client(replicas[0], "traced"), _client(replicas[1], "traced")]
    for n in range(4):  # a model of its own tells this test's calls from the other tests'
        assert await _ask(clients[n % 2], model="traced-model") == 200

    def calls() -> list[Any]:
        return [s for s in collector.rx.spans() if s.name == "chat traced-model"]

    spans = collector.wait_for(lambda: len(calls()) >= 4 and calls())
    assert len(spans) == 4
    # One service, two instances: a query can sum them or tell them apart.
    assert {s.resource.get("service.name") for s in spans} == {"gateway"}
    assert len({s.resource.get("service.instance.id") for s in spans}) == 2
    for client in clients:
        await client.close()
