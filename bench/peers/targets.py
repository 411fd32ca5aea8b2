"""The proxies the side-by-side bench compares, each started in front of the same simulated upstream.

A target is started, measured, and stopped before the next one starts, so targets never compete for a core.
Every one listens on loopback; its process tree (supervisor and workers included) is what /proc is read over.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench._util import MODEL, ROOT, Redis, free_port, spawn, wait_port

PEERS = Path(__file__).resolve().parent
LITELLM_VENV = Path(os.environ.get("OTELGATE_BENCH_LITELLM_VENV", Path.home() / ".cache/otelgate-bench/litellm"))
BENCH_KEY = "sk-bench"  # what every client sends as x-api-key; otelgate-full knows it as a virtual key


@dataclass
class Env:
    """What every target shares for one bench run."""

    sim_url: str
    proxy_cores: str | None
    load_cores: str | None
    workdir: Path
    sink_url: str | None = None
    redis: Redis | None = None
    # A command the Python targets run under (bench/instructions.py: valgrind), and how long they may take to start.
    wrapper: tuple[str, ...] = ()
    start_timeout: float = 20.0


@dataclass
class Running:
    proc: subprocess.Popen[bytes] | None  # None: nothing in between (direct to the upstream)
    url: str
    log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@dataclass
class Target:
    name: str
    about: str
    start: Callable[[Env], Running]
    startup_s: float = 30.0


def _log(env: Env, name: str) -> Path:
    return env.workdir / f"{name}.log"


def _direct(env: Env) -> Running:
    return Running(None, env.sim_url)


def _forwarder(env: Env) -> Running:
    # The same event loop otelgate runs on (uvloop, when installed), so the floor is a fair one.
    port = free_port()
    code = ("import asyncio, runpy, sys\n"
            "try:\n    import uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
            "except ImportError:\n    pass\n"
            f"sys.argv = ['forwarder', '--upstream', {env.sim_url!r}, '--port', '{port}']\n"
            f"runpy.run_path({str(ROOT / 'bench' / 'forwarder.py')!r}, run_name='__main__')\n")
    log = _log(env, "forwarder")
    proc = spawn([*env.wrapper, sys.executable, "-c", code], env.proxy_cores, log=log)
    wait_port(port, timeout=env.start_timeout, proc=proc)
    return Running(proc, f"http://127.0.0.1:{port}", log)


def _nginx(workers: int) -> Callable[[Env], Running]:
    def start(env: Env) -> Running:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx is not installed: apt-get install nginx")
        port = free_port()
        prefix = env.workdir / f"nginx-w{workers}"
        prefix.mkdir(exist_ok=True)
        upstream_port = env.sim_url.rsplit(":", 1)[1]
        conf = (PEERS / "nginx.conf.template").read_text()
        for name, value in {"PREFIX": str(prefix), "WORKERS": str(workers), "PORT": str(port),
                            "UPSTREAM_PORT": upstream_port}.items():
            conf = conf.replace(f"@@{name}@@", value)
        (prefix / "nginx.conf").write_text(conf)
        log = _log(env, f"nginx-w{workers}")
        proc = spawn([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
                     env.proxy_cores, log=log)
        wait_port(port, proc=proc)
        return Running(proc, f"http://127.0.0.1:{port}", log)

    return start


def _otelgate(workers: int, full: bool, store: str = "sqlite", screening: bool = True) -> Callable[[Env], Running]:
    def start(env: Env) -> Running:
        port = free_port()
        name = f"otelgate-{'full-' + store if full else 'min' if screening else 'bare'}-w{workers}"
        config: dict[str, object] = {
            "server": {"host": "127.0.0.1", "port": port, "workers": workers},
            "upstreams": {"anthropic": {"base_url": env.sim_url}},
            "budgets": {"store": f"sqlite:///{env.workdir / name}.db"},
        }
        extra_env = {"OTELGATE_TELEMETRY__ENABLED": "false"}
        if not screening:  # the default config screens user text and redacts outbound secrets; this turns both off
            config["screening"] = {"mode": "off", "secrets": "off"}
        if full:
            config.update(full_config(env, store, name))
            extra_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": env.sink_url or "", "OTEL_EXPORTER_OTLP_PROTOCOL":
                         "http/protobuf", "OTEL_METRIC_EXPORT_INTERVAL": "5000", "OTEL_SERVICE_NAME": name}
            config["upstreams"] = {"anthropic": {"base_url": env.sim_url, "api_key": "sk-bench-upstream"}}
        path = env.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        # Nothing from the caller's environment may change what is measured.
        clean = {k: "" for k in os.environ if k.startswith(("OTELGATE_", "OTEL_"))}
        log = _log(env, name)
        proc = spawn([*env.wrapper, sys.executable, "-m", "otelgate", "serve", "--config", str(path)],
                     env.proxy_cores, env={**clean, **extra_env}, log=log, cwd=env.workdir)
        wait_port(port, timeout=env.start_timeout, proc=proc)
        return Running(proc, f"http://127.0.0.1:{port}", log)

    return start


def full_config(env: Env, store: str, name: str) -> dict[str, object]:
    """Everything on: a virtual key with rate limits and budgets (key, team, global), screening of every text
    the request carries, telemetry exported over OTLP. The limits are far away: every request is admitted, but
    every check and every store write still happens."""
    if store == "redis":
        if env.redis is None:
            raise RuntimeError("no redis-server for the redis store")
        store_url = env.redis.url
    else:
        store_url = f"sqlite:///{env.workdir / name}.db"
    return {
        "auth": {"mode": "virtual_keys", "admin_key": "bench-admin-key-0123456789"},
        "keys": [{
            "id": "bench-agent", "key_sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest(), "team": "bench",
            "limits": {"max_tokens_per_request": 4096, "requests_per_minute": 100_000_000,
                       "tokens_per_minute": 1_000_000_000_000},
            "budgets": [{"window": "day", "usd": 1e9}, {"window": "month", "usd": 1e10, "tokens": 10**13}],
        }],
        "teams": [{"id": "bench", "budgets": [{"window": "month", "usd": 1e10}]}],
        "budgets": {
            "store": store_url,
            # One busy process: a store call may wait for its turn behind the event loop (docs/budgets.md).
            "store_timeout": 2.0,
            "pricing": {MODEL: {"input": 3.0, "output": 15.0}},
            "global": [{"window": "day", "usd": 1e11}],
        },
        "screening": {"mode": "block", "scan": ["user", "tool_result", "system", "documents"], "scope": "all"},
        "telemetry": {"enabled": True, "prometheus": True, "log_requests": True},
    }


def litellm_binary() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        print(f"installing the LiteLLM proxy into {LITELLM_VENV} (bench/peers/setup_litellm.sh) ...", flush=True)
        subprocess.run([str(PEERS / "setup_litellm.sh")], check=True, stdout=subprocess.DEVNULL)
    return binary


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def _litellm(workers: int) -> Callable[[Env], Running]:
    def start(env: Env) -> Running:
        binary = litellm_binary()
        port = free_port()
        conf = env.workdir / f"litellm-w{workers}.yaml"
        conf.write_text((PEERS / "litellm.yaml.template").read_text().replace("@@UPSTREAM@@", env.sim_url))
        log = _log(env, f"litellm-w{workers}")
        proc = spawn([str(binary), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
                      "--num_workers", str(workers)], env.proxy_cores, log=log, cwd=env.workdir, env={
            "LITELLM_MASTER_KEY": BENCH_KEY,
            # No network at start-up (it otherwise fetches a price list from GitHub), no debug logging.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
        })
        wait_port(port, timeout=180, proc=proc)
        return Running(proc, f"http://127.0.0.1:{port}", log)

    return start


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("direct", "straight to the simulated upstream (the baseline for added latency)", _direct),
    Target("forwarder", "bench/forwarder.py: bare aiohttp forwarder on uvloop, no parsing", _forwarder),
    Target("nginx", "nginx reverse proxy, 1 worker, proxy_buffering off, upstream keepalive", _nginx(1)),
    Target("otelgate-min", "otelgate, pass-through auth, no limits, telemetry.enabled: false", _otelgate(1, False)),
    Target("otelgate-bare", "otelgate-min with screening (on by default) off too",
           _otelgate(1, False, screening=False)),
    Target("otelgate-min-w2", "otelgate-min with --workers 2", _otelgate(2, False)),
    Target("otelgate-full-sqlite", "otelgate, everything on (see docs/performance.md), SQLite store",
           _otelgate(1, True, "sqlite")),
    Target("otelgate-full-redis", "otelgate, everything on, Redis store", _otelgate(1, True, "redis")),
    Target("otelgate-full-redis-w2", "otelgate-full-redis with --workers 2", _otelgate(2, True, "redis")),
    Target("litellm", "LiteLLM proxy 1.108.7, no database, 1 worker", _litellm(1), startup_s=180),
    Target("litellm-w2", "LiteLLM proxy, --num_workers 2", _litellm(2), startup_s=180),
]}


def describe() -> str:
    return "\n".join(f"  {t.name:24} {t.about}" for t in TARGETS.values())

