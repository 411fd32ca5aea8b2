"""Static checks of the operations stack: dashboards, their PromQL (parsed by a real Prometheus), provisioning,
Prometheus config, collector config, docker-compose and the Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsutil import (
    REPO,
    Service,
    metric_names,
    need_binary,
    prom_query,
    prometheus,
    run_tool,
    runbook_metrics,
)

DASHBOARD_DIR = REPO / "dashboards" / "json"
STABLE_UIDS = {"otelgate-overview", "otelgate-cost", "otelgate-reliability", "otelgate-security", "otelgate-agents"}
# What Grafana would substitute; "All" of a multi-value variable is its allValue ".*".
VARIABLES = {"model": ".*", "key": ".*", "team": ".*", "tool": ".*",
             "__rate_interval": "1m", "__interval": "30s", "__range": "1h"}
COMPOSE = REPO / "docker-compose.yml"


def dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))]


def targets() -> list[tuple[str, str, dict[str, Any]]]:
    return [(d["uid"], p["title"], t) for d in dashboards() for p in d["panels"] for t in p["targets"]]


def substitute(expr: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown dashboard variable ${name} in {expr}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


# --- dashboards ---------------------------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_writes(tmp_path: Path) -> None:
    result = run_tool([sys.executable, str(REPO / "dashboards" / "generate.py"), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text() for p in DASHBOARD_DIR.glob("*.json")}
    assert generated == committed, "run `python dashboards/generate.py` and commit dashboards/json/"


def test_dashboards_have_unique_stable_uids_and_the_template_variables() -> None:
    ds = dashboards()
    uids = [d["uid"] for d in ds]
    assert len(uids) == len(set(uids))
    assert set(uids) == STABLE_UIDS
    for d in ds:
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert {"datasource", "model", "key", "team"} <= set(variables), d["uid"]
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("model", "key", "team"):
            assert variables[name]["definition"].startswith("label_values(")
            assert variables[name]["datasource"]["uid"] == "${datasource}"


def test_every_panel_has_a_datasource_and_real_queries() -> None:
    for d in dashboards():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), d["uid"]
        for panel in d["panels"]:
            where = f"{d['uid']} / {panel['title']}"
            assert panel["datasource"]["uid"], where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"]["uid"], where
                assert target["expr"].strip(), where
                assert metric_names(target["expr"]), f"{where}: no metric in {target['expr']}"


def test_latency_panels_show_exemplars_linked_to_tempo() -> None:
    latency = [(d["uid"], p) for d in dashboards() for p in d["panels"]
               if p["fieldConfig"]["defaults"]["unit"] == "s" and p["type"] == "timeseries"
               and any("histogram_quantile" in t["expr"] for t in p["targets"])]
    assert len(latency) >= 4
    for uid, panel in latency:
        assert all(t.get("exemplar") for t in panel["targets"]), f"{uid} / {panel['title']}"
    sources = yaml.safe_load((REPO / "dashboards/provisioning/datasources/datasources.yml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["tempo"]["type"] == "tempo"
    links = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "tempo"} in links


def test_dashboards_only_query_metrics_from_the_runbook_reference() -> None:
    known = runbook_metrics()
    used = set().union(*(metric_names(t["expr"]) for _, _, t in targets()))
    assert used <= known, f"not in docs/runbook.md's metrics reference: {sorted(used - known)}"
    # And every metric family of the reference has a panel somewhere (span metrics are optional extras).
    def family(name: str) -> str:
        return re.sub(r"_(bucket|sum|count)$", "", name)

    unused = {family(m) for m in known if not m.startswith("traces_span_metrics")} - {family(m) for m in used}
    assert not unused, f"no panel for {sorted(unused)}"


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with prometheus(tmp_path_factory.mktemp("prometheus")) as svc:
        yield svc


def test_every_panel_query_parses_in_prometheus(prom: Service) -> None:
    failures = []
    for uid, title, target in targets():
        expr = substitute(target["expr"])
        status, body = prom_query(prom.url, expr)
        if status != 200:
            failures.append(f"{uid} / {title}: {body.get('error')}\n    {expr}")
    assert not failures, "\n".join(failures)


def test_variable_queries_use_valid_selectors(prom: Service) -> None:
    for d in dashboards():
        for var in d["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert m, var["definition"]
            status, body = prom_query(prom.url, m.group(1))
            assert status == 200, body


def test_a_broken_query_is_caught(prom: Service) -> None:
    # The check above would pass vacuously if Prometheus accepted anything.
    status, body = prom_query(prom.url, "sum by (le (rate(x[5m]))")
    assert status == 400 and body["errorType"] == "bad_data"


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = yaml.safe_load((REPO / "dashboards/provisioning/dashboards/dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./dashboards/json:{path}:ro" in mounts


# --- Prometheus, collector, Tempo ---------------------------------------------------------------------------


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = need_binary("promtool")
    text = (REPO / "alerting" / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/" in text
    # The config names the rules where the compose file mounts them; point it at the repo's copy instead.
    shutil.copytree(REPO / "alerting" / "rules", tmp_path / "rules")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules/", f"{tmp_path}/rules/"))
    result = run_tool([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    parsed = yaml.safe_load(text)
    jobs = {j["job_name"]: j for j in parsed["scrape_configs"]}
    assert jobs["otelgate"]["static_configs"][0]["targets"] == ["otelgate:8787"]
    assert jobs["otelgate"].get("metrics_path", "/metrics") == "/metrics"
    assert "otel-collector:8889" in jobs["otel-collector"]["static_configs"][0]["targets"]
    assert parsed["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_collector_computes_span_metrics_before_tail_sampling() -> None:
    config = yaml.safe_load((REPO / "collector-config" / "otel-collector.yaml").read_text())
    pipelines = config["service"]["pipelines"]
    # The pipeline that feeds spanmetrics must not sample; sampling happens downstream of the forward connector.
    feeding = [p for p in pipelines.values() if "spanmetrics" in p.get("exporters", [])]
    assert len(feeding) == 1 and "tail_sampling" not in feeding[0]["processors"]
    assert "otlp" in feeding[0]["receivers"] and feeding[0]["processors"][0] == "memory_limiter"
    sampled = [p for p in pipelines.values() if "tail_sampling" in p.get("processors", [])]
    assert len(sampled) == 1 and "otlp/tempo" in sampled[0]["exporters"]
    assert set(sampled[0]["receivers"]) & set(feeding[0]["exporters"]), "sampled pipeline not fed by the first"
    assert "spanmetrics" in pipelines["metrics"]["receivers"]
    assert "prometheus" in pipelines["metrics"]["exporters"]
    for name, pipeline in pipelines.items():
        procs = pipeline.get("processors", [])
        assert "batch" not in procs or procs.index("batch") == len(procs) - 1, name

    ts = config["processors"]["tail_sampling"]
    assert int(ts["decision_wait"].rstrip("s")) >= 120
    policies = {p["type"]: p for p in ts["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    numeric_keys = {p["numeric_attribute"]["key"] for p in ts["policies"] if p["type"] == "numeric_attribute"}
    assert numeric_keys == {"http.request.resend_count", "otelgate.retries"}
    assert policies["boolean_attribute"]["boolean_attribute"] == {"key": "otelgate.screening.flagged",
                                                                  "value": True}
    assert policies["string_attribute"]["string_attribute"]["key"] == "otelgate.rejected.reason"
    assert "budget" in policies["string_attribute"]["string_attribute"]["values"]
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    assert "latency" in policies
    receivers = config["receivers"]["otlp"]["protocols"]
    assert receivers["grpc"]["endpoint"].endswith(":4317") and receivers["http"]["endpoint"].endswith(":4318")
    assert config["exporters"]["otlp/tempo"]["endpoint"] == "tempo:4317"


def test_tempo_config_receives_otlp_grpc() -> None:
    tempo = yaml.safe_load((REPO / "collector-config" / "tempo.yaml").read_text())
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert tempo["server"]["http_listen_port"] == 3200


# --- docker-compose and Dockerfile --------------------------------------------------------------------------


def test_compose_services_and_demo_profile() -> None:
    services = compose()["services"]
    assert {"otelgate", "otel-collector", "prometheus", "alertmanager", "grafana", "tempo", "sim",
            "load-driver"} <= set(services)
    assert services["sim"]["profiles"] == ["demo"] and services["load-driver"]["profiles"] == ["demo"]
    assert all("profiles" not in services[s] for s in ("otelgate", "otel-collector", "prometheus", "grafana"))
    assert services["sim"]["entrypoint"] == ["python", "-m", "otelgate.sim"]
    assert "--port" in services["sim"]["command"] and "9000" in services["sim"]["command"]
    env = services["otelgate"]["environment"]
    for name in ("OTELGATE_UPSTREAMS__ANTHROPIC__BASE_URL", "OTELGATE_UPSTREAMS__OPENAI__BASE_URL",
                 "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"):
        assert name in env
    assert env["OTEL_SERVICE_NAME"] == "otelgate"
    assert "exemplar-storage" in " ".join(services["prometheus"]["command"])
    for svc in services.values():  # published on loopback only
        assert all(str(p).startswith("127.0.0.1:") for p in svc.get("ports", []))


def bind_mounts() -> list[tuple[str, Path]]:
    mounts = []
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                mounts.append((name, (REPO / source).resolve()))
    return mounts


def _parse(path: Path) -> None:
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix in {".yml", ".yaml"}:
        yaml.safe_load(path.read_text())
    elif path.suffix == ".py":
        compile(path.read_text(), str(path), "exec")


def test_every_mounted_file_exists_and_parses() -> None:
    mounts = bind_mounts()
    assert len(mounts) >= 8
    for service, source in mounts:
        assert source.exists(), f"{service} mounts missing {source}"
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        assert files, f"{service} mounts empty directory {source}"
        for path in files:
            _parse(path)


def test_compose_environment_is_a_valid_otelgate_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from otelgate.config import load_config

    for name in list(os.environ):
        if name.startswith("OTELGATE_"):
            monkeypatch.delenv(name)
    for name, value in compose()["services"]["otelgate"]["environment"].items():
        # Compose substitutes ${VAR:-default}; with VAR unset that is the default.
        monkeypatch.setenv(name, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)))
    settings = load_config()
    assert settings.upstreams.anthropic.base_url == "http://sim:9000"
    assert settings.upstreams.openai.base_url == "http://sim:9000/v1"
    assert {k.id for k in settings.keys} == {"support-bot", "research-agent", "batch-job"}


def test_docker_compose_config_validates() -> None:
    binary = need_binary("docker-compose")
    result = run_tool([binary, "-f", str(COMPOSE), "--profile", "demo", "config", "-q"])
    assert result.returncode == 0, result.stdout + result.stderr
    services = run_tool([binary, "-f", str(COMPOSE), "--profile", "demo", "config", "--services"])
    assert set(services.stdout.split()) >= {"otelgate", "sim", "load-driver", "grafana"}


def test_dockerfile_builds_the_proxy_image() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, flags=re.M)
    # The package with the Redis store's client (replicas share budgets through Redis) and uvloop.
    assert 'pip install ".[redis,speed]"' in text
    assert "/health" in text and "HEALTHCHECK" in text
    assert 'CMD ["serve", "--host", "0.0.0.0"]' in text and 'ENTRYPOINT ["otelgate"]' in text
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert "proxy" not in ignored and "README.md" not in ignored and ".git" in ignored


# --- the demo load driver ------------------------------------------------------------------------------------


def test_load_driver_drives_agent_sessions_against_the_sim() -> None:
    """The driver talks to otelgate's sim directly here (no proxy): every call must be understood (200), bar
    the scripted 429/529s that a proxy would retry."""
    from otelgate.sim import SimUpstream

    with SimUpstream.in_thread(port=0) as sim:
        result = subprocess.run(
            [sys.executable, str(REPO / "examples" / "load_driver.py"), "--proxy", sim.url,
             "--sessions-per-second", "20", "--duration", "1.5", "--seed", "7", "--slow-delay", "0.4"],
            capture_output=True, text=True, timeout=60, check=False)
        requests = list(sim.requests)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1].split(":", 1)[1].replace("'", '"'))
    assert final.get("200", 0) >= 20
    assert set(final) <= {"200", "429", "529"}, final
    paths = {r.path for r in requests}
    assert {"/v1/messages", "/v1/chat/completions"} <= paths
    assert any("x-otelgate-session" in {k.lower() for k in r.headers} for r in requests)
