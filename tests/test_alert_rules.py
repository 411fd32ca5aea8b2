"""The Prometheus alert rules, their promtool unit tests, and the Alertmanager config (routing, inhibition)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsutil import (
    REPO,
    WebhookReceiver,
    alertmanager,
    am_alerts,
    firing,
    metric_names,
    need_binary,
    post_alerts,
    run_tool,
    runbook_metrics,
    write_alertmanager_config,
)

RULE_FILES = sorted((REPO / "alerting" / "rules").glob("*.yml"))
TEST_FILES = sorted((REPO / "alerting" / "tests").glob("*.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"
EXPECTED_ALERTS = {
    "OtelgateDown", "OtelgateHighErrorRatio", "OtelgateUpstreamRateLimitStorm", "OtelgateSlowTimeToFirstToken",
    "OtelgateBudgetNearlyExhausted", "OtelgateBudgetExhausted", "OtelgateBudgetExhaustionForecast",
    "OtelgateInjectionSpike", "OtelgateToolErrorSpike", "OtelgateTelemetryExportFailing", "OtelgateCircuitOpen",
}


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def runbook_anchors() -> set[str]:
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes.
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.M)}


def test_rule_files_pass_promtool_check() -> None:
    promtool = need_binary("promtool")
    assert RULE_FILES
    result = run_tool([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    promtool = need_binary("promtool")
    assert TEST_FILES
    result = run_tool([promtool, "test", "rules", *map(str, TEST_FILES)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing_cases: set[str] = set()
    quiet_cases: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing_cases if check.get("exp_alerts") else quiet_cases).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names == EXPECTED_ALERTS
    assert names - firing_cases == set(), "alerts never shown firing"
    assert names - quiet_cases == set(), "alerts never shown staying quiet"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_carries_severity_summary_description_and_runbook_link(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path.endswith("docs/runbook.md")
    assert anchor == rule["alert"].lower()
    assert anchor in runbook_anchors(), f"docs/runbook.md has no section {rule['alert']}"


def test_alerts_only_query_metrics_from_the_runbook_reference() -> None:
    known = runbook_metrics()
    used = set().union(*(metric_names(r["expr"]) for r in alert_rules()))
    assert used and used <= known, f"not in the runbook's metrics reference: {sorted(used - known)}"


def test_alertmanager_config_passes_amtool() -> None:
    amtool = need_binary("amtool")
    result = run_tool([amtool, "check-config", str(REPO / "alerting" / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_shape() -> None:
    config = yaml.safe_load((REPO / "alerting" / "alertmanager.yml").read_text())
    hooks = [h["url"] for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks == ["http://127.0.0.1:5001/"]
    down = [r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="OtelgateDown"']]
    assert down and set(down[0]["equal"]) == {"job", "instance"}
    assert {"alertname", "job", "instance"} <= set(config["route"]["group_by"])
    text = (REPO / "alerting" / "alertmanager.yml").read_text()
    assert "#   slack_configs:" in text and "#   pagerduty_configs:" in text


def _alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, "job": "otelgate", **labels},
            "annotations": {"summary": name}}


def test_alertmanager_delivers_and_otelgate_down_inhibits_the_rest(tmp_path: Path) -> None:
    """The real Alertmanager with the repo's routing: OtelgateDown on instance a silences a's other alerts,
    while the same alert on instance b still reaches the webhook."""
    with WebhookReceiver() as hook:
        config = write_alertmanager_config(tmp_path / "alertmanager.yml", hook.url)
        with alertmanager(tmp_path, config) as am:
            assert post_alerts(am.url, [_alert("OtelgateDown", "critical", instance="a:8787")]) == 200
            hook.wait_for(lambda p: firing(p, "OtelgateDown"), timeout=15)
            assert post_alerts(am.url, [
                _alert("OtelgateDown", "critical", instance="a:8787"),
                _alert("OtelgateHighErrorRatio", "warning", instance="a:8787", gen_ai_request_model="m"),
                _alert("OtelgateHighErrorRatio", "warning", instance="b:8787", gen_ai_request_model="m"),
            ]) == 200
            payload = hook.wait_for(lambda p: firing(p, "OtelgateHighErrorRatio"), timeout=15)
            assert {a["labels"]["instance"] for a in payload["alerts"]} == {"b:8787"}
            states = {(a["labels"]["alertname"], a["labels"]["instance"]): a["status"] for a in am_alerts(am.url)}
            assert states[("OtelgateHighErrorRatio", "a:8787")]["state"] == "suppressed"
            assert states[("OtelgateHighErrorRatio", "a:8787")]["inhibitedBy"]
            assert states[("OtelgateHighErrorRatio", "b:8787")]["state"] == "active"
            assert states[("OtelgateDown", "a:8787")]["state"] == "active"
            assert all(a["labels"]["instance"] != "a:8787" or a["labels"]["alertname"] == "OtelgateDown"
                       for p in hook.payloads for a in p["alerts"])


def test_prometheus_helper_loads_the_rules_and_finds_alertmanager(tmp_path: Path) -> None:
    """The start-a-Prometheus helper as the end-to-end test will use it: repo rules, an Alertmanager target."""
    from opsutil import http_get, prometheus, wait_until, write_prometheus_config

    with WebhookReceiver() as hook:
        am_config = write_alertmanager_config(tmp_path / "alertmanager.yml", hook.url)
        with alertmanager(tmp_path / "am", am_config) as am:
            config = write_prometheus_config(tmp_path / "prometheus.yml", scrape={"otelgate": ["127.0.0.1:9"]},
                                             rule_files=RULE_FILES, alertmanagers=[am.host_port])
            with prometheus(tmp_path / "prom", config) as prom:
                status, body = http_get(f"{prom.url}/api/v1/rules?type=alert")
                assert status == 200
                loaded = {r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]}
                assert loaded == EXPECTED_ALERTS

                def active() -> list[str]:
                    _, body = http_get(f"{prom.url}/api/v1/alertmanagers")
                    return [a["url"] for a in json.loads(body)["data"]["activeAlertmanagers"]]

                assert wait_until(active, timeout=15) == [f"{am.url}/api/v2/alerts"]
