"""Helpers for the operations-stack tests: real Prometheus, Alertmanager and a webhook receiver on loopback.

    with prometheus(tmp_path, write_prometheus_config(tmp_path / "p.yml", scrape={"otelgate": ["127.0.0.1:8787"]},
                    rule_files=[REPO / "alerting/rules/otelgate-alerts.yml"],
                    alertmanagers=[am.host_port])) as prom:
        status, body = prom_query(prom.url, 'up{job="otelgate"}')

    with WebhookReceiver() as hook, alertmanager(tmp_path, write_alertmanager_config(tmp_path / "am.yml",
                                                                                      hook.url)) as am:
        payload = hook.wait_for(lambda p: firing(p, "OtelgateDown"), timeout=10)

Binaries are the Debian ones (`prometheus`, `prometheus-alertmanager`, `promtool`, `amtool`); `need_binary`
fails the test under CI=true when one is missing and skips it elsewhere, naming the package to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
DEBIAN_PACKAGE = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
}


def need_binary(*names: str) -> str:
    """Path of the first of `names` on PATH. Missing: pytest.fail under CI=true, else pytest.skip."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    package = DEBIAN_PACKAGE.get(names[0], names[0])
    reason = f"{' / '.join(names)} not found on PATH (apt-get install -y {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def run_tool(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command line tool, capturing its output as text (for assertion messages)."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A started server process: its base URL, its log file, and how to stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(condition: Callable[[], Any], timeout: float = 10, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `timeout` passes (AssertionError).
    For state that a server reaches asynchronously, e.g. Prometheus discovering its Alertmanager."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def _wait_ready(svc: Service, path: str, timeout: float) -> None:
    # Polls the server's own readiness endpoint: the wait ends on a condition, not after a guessed delay.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode}:\n{svc.logs()[-3000:]}")
        with contextlib.suppress(OSError):
            status, _ = http_get(svc.url + path, timeout=1)
            if status == 200:
                return
        time.sleep(0.05)
    svc.stop()
    raise RuntimeError(f"{svc.name} not ready on {svc.url}{path} within {timeout}s:\n{svc.logs()[-3000:]}")


def _start(name: str, argv_for_port: Callable[[int], list[str]], workdir: Path, ready_path: str,
           timeout: float) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    # free_port() cannot reserve the port; another process may take it before the server binds. Retry then.
    for attempt in range(3):
        port = free_port()
        log_path = workdir / f"{name}-{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv_for_port(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                    stdin=subprocess.DEVNULL)
        svc = Service(name, proc, port, log_path)
        try:
            _wait_ready(svc, ready_path, timeout)
            return svc
        except RuntimeError as exc:
            svc.stop()
            last_error = exc
            if "address already in use" not in svc.logs():
                break
    raise RuntimeError(str(last_error))


def write_prometheus_config(path: Path, *, scrape: dict[str, list[str]] | None = None,
                            rule_files: Sequence[Path] = (), alertmanagers: Sequence[str] = (),
                            scrape_interval: str = "1s", evaluation_interval: str = "1s",
                            metrics_path: str = "/metrics") -> Path:
    """A Prometheus config for tests: short intervals, one job per `scrape` entry (job name -> host:port list)."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval,
                   "scrape_timeout": scrape_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": metrics_path, "static_configs": [{"targets": list(targets)}]}
            for job, targets in (scrape or {}).items()
        ],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def prometheus(workdir: Path, config: Path | None = None, *, extra_args: Sequence[str] = (),
               timeout: float = 30) -> Iterator[Service]:
    """Run Debian's `prometheus` on a free loopback port with its own storage under `workdir`."""
    binary = need_binary("prometheus")
    config = config or write_prometheus_config(workdir / "prometheus.yml")
    storage = workdir / "prometheus-data"

    def argv(port: int) -> list[str]:
        return [binary, f"--config.file={config}", f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", *extra_args]

    svc = _start("prometheus", argv, workdir, "/-/ready", timeout)
    try:
        yield svc
    finally:
        svc.stop()


def prom_query(base_url: str, expr: str, at: float | None = None) -> tuple[int, dict[str, Any]]:
    """Instant query. Returns (HTTP status, decoded body); a PromQL parse error is status 400."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    status, body = http_get(f"{base_url}/api/v1/query?{urllib.parse.urlencode(params)}")
    return status, json.loads(body)


def prom_query_range(base_url: str, expr: str, start: float, end: float, step: float = 1.0
                     ) -> tuple[int, dict[str, Any]]:
    """Range query, as Grafana runs a time-series panel over the dashboard's time range."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    status, body = http_get(f"{base_url}/api/v1/query_range?{urllib.parse.urlencode(params)}")
    return status, json.loads(body)


def prom_label_values(base_url: str, label: str, match: str, start: float, end: float) -> list[str]:
    """What Grafana's `label_values(match, label)` variable query lists over a time range."""
    params = {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
    status, body = http_get(f"{base_url}/api/v1/label/{label}/values?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    return list(json.loads(body)["data"])


def last_scrape(base_url: str, job: str) -> float:
    """Unix time of Prometheus's latest successful scrape of `job` (0.0 when there is none yet)."""
    status, body = prom_query(base_url, f'timestamp(up{{job="{job}"}} == 1)')
    assert status == 200, body
    result = body["data"]["result"]
    return max((float(r["value"][1]) for r in result), default=0.0)


def wait_scraped_after(base_url: str, job: str, moment: float, timeout: float = 10) -> None:
    """Block until Prometheus has scraped `job` after `moment` (time.time()): everything the target showed
    at `moment` is then in the TSDB. Synchronises on the scrape itself rather than on a guessed delay."""
    wait_until(lambda: last_scrape(base_url, job) > moment, timeout=timeout)


def write_alertmanager_config(path: Path, webhook_url: str, *, source: Path | None = None,
                              group_wait: str = "1s", group_interval: str = "1s",
                              repeat_interval: str = "1h") -> Path:
    """The repo's alertmanager.yml (routing, inhibition) with every webhook pointed at `webhook_url` and the
    timings shrunk so notifications arrive within seconds."""
    config = yaml.safe_load((source or REPO / "alerting" / "alertmanager.yml").read_text())

    def shrink(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", group_wait), ("group_interval", group_interval),
                           ("repeat_interval", repeat_interval)):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shrink(child)

    config["route"].update(group_wait=group_wait, group_interval=group_interval, repeat_interval=repeat_interval)
    shrink(config["route"])
    for receiver in config.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def alertmanager(workdir: Path, config: Path, *, timeout: float = 30) -> Iterator[Service]:
    """Run Debian's `prometheus-alertmanager` on a free loopback port, clustering off."""
    binary = need_binary("prometheus-alertmanager", "alertmanager")
    storage = workdir / "alertmanager-data"

    def argv(port: int) -> list[str]:
        return [binary, f"--config.file={config}", f"--storage.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]

    svc = _start("alertmanager", argv, workdir, "/-/ready", timeout)
    try:
        yield svc
    finally:
        svc.stop()


def post_alerts(am_url: str, alerts: list[dict[str, Any]]) -> int:
    """Send alerts to Alertmanager's v2 API as Prometheus would; returns the HTTP status."""
    req = urllib.request.Request(f"{am_url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def am_alerts(am_url: str) -> list[dict[str, Any]]:
    """Alertmanager's current alerts (v2 API), each with status.state active|suppressed and status.inhibitedBy."""
    status, body = http_get(f"{am_url}/api/v2/alerts")
    assert status == 200, body
    return list(json.loads(body))


def firing(payload: dict[str, Any], alertname: str) -> bool:
    """True when an Alertmanager webhook payload carries `alertname` firing."""
    return any(a.get("status") == "firing" and a.get("labels", {}).get("alertname") == alertname
               for a in payload.get("alerts", []))


@dataclass
class WebhookReceiver:
    """An aiohttp server on its own thread and loop that records Alertmanager webhook payloads.

    Usable from sync and async tests alike; `wait_for` blocks on a condition variable until a payload
    satisfying the predicate has arrived.
    """

    host: str = "127.0.0.1"
    path: str = "/"
    payloads: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        with self._cond:
            self.payloads.append(payload)
            self._cond.notify_all()
        return web.Response(text="ok")

    def __enter__(self) -> WebhookReceiver:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                app = web.Application()
                app.router.add_post(self.path, self._handle)
                self._runner = web.AppRunner(app, access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, self.host, 0)
                loop.run_until_complete(site.start())
                self.port = int(self._runner.addresses[0][1])
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="webhook-receiver", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """The first payload (already received or arriving within `timeout`) for which `predicate` holds."""

        def match() -> dict[str, Any] | None:
            return next((p for p in self.payloads if predicate(p)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                raise AssertionError(f"no matching webhook payload within {timeout}s; got {self.payloads!r}")
            found = match()
            assert found is not None
            return found

    def alertnames(self, status: str = "firing") -> set[str]:
        with self._cond:
            return {a["labels"]["alertname"] for p in self.payloads for a in p.get("alerts", [])
                    if a.get("status") == status}


# PromQL words that look like metric names but are functions, aggregations, keywords or duration-free modifiers.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
    "bool", "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "histogram_quantile",
    "absent", "absent_over_time", "clamp_min", "clamp_max", "clamp", "label_replace", "label_join", "vector",
    "scalar", "time", "timestamp", "abs", "ceil", "floor", "round", "sort", "sort_desc", "changes", "resets",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "inf", "nan", "le",
}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (good enough for the expressions in this repo)."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # matchers: their label names are not metrics
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range durations
    words = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {w for w in words if w not in _PROMQL_WORDS}


def runbook_metrics(runbook: Path | None = None) -> set[str]:
    """Metric names listed under "## Metrics reference" in docs/runbook.md (`_bucket` / `_sum` / `_count`
    shorthand expanded)."""
    text = (runbook or REPO / "docs" / "runbook.md").read_text()
    section = text.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("- "):
            continue
        head = line.split(" — ", 1)[0]
        base = ""
        for token in re.findall(r"`([^`]+)`", head):
            if token.startswith("_") and base:
                names.add(base + token)
            else:
                names.add(token)
                base = re.sub(r"_bucket$", "", token)
    return names
