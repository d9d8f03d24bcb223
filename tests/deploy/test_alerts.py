"""The chart's PrometheusRule: rendered through the real Helm engine, checked and unit-tested
by promtool (alerts/alerts-test.yaml: each alert fires and stays quiet as it should), and
each alert's runbook_url names a section of docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import deploylib as d

ALERTS_TEST = Path(__file__).parent / "alerts" / "alerts-test.yaml"
OPERATIONS = d.REPO / "docs" / "operations.md"


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if not found:
        pytest.fail("promtool not found (Debian package prometheus)", pytrace=False)
    return found


def rule(values: dict | None = None) -> dict:
    values = values or {"metrics": {"prometheusRule": {"enabled": True}}}
    docs = d.manifests_of(d.helm_render(values))
    found = [x for x in docs if x.get("kind") == "PrometheusRule"]
    assert len(found) == 1, f"expected one PrometheusRule, got {len(found)}"
    return found[0]


def alerts(doc: dict) -> list[dict]:
    return [r for g in doc["spec"]["groups"] for r in g["rules"] if "alert" in r]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True)


def test_no_rule_unless_enabled(renders):
    for name, rendered in renders.items():
        values = d.values_sets()[name]
        enabled = values.get("metrics", {}).get("prometheusRule", {}).get("enabled", False)
        kinds = [x.get("kind") for x in d.manifests_of(rendered)]
        assert ("PrometheusRule" in kinds) == enabled, name


def test_a_ci_values_file_renders_the_rule_and_the_dashboard(renders):
    rendered = [d.manifests_of(r) for r in renders.values()]
    assert any(any(x.get("kind") == "PrometheusRule" for x in docs) for docs in rendered)
    assert any(
        any(x.get("kind") == "ConfigMap" and "grafana_dashboard" in x["metadata"].get("labels", {}) for x in docs)
        for docs in rendered
    )


def test_the_rendered_rule_passes_promtool_check(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule()["spec"]["groups"]}))
    out = run("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_and_stays_quiet_as_its_promtool_tests_say(tmp_path):
    doc = rule()
    groups = doc["spec"]["groups"]
    # Annotations are text for people; the tests compare what decides firing: expressions,
    # `for` and labels, exactly as the chart renders them.
    for g in groups:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    out = run("test", "rules", str(tmp_path / ALERTS_TEST.name))
    assert out.returncode == 0, out.stdout + out.stderr

    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for a in alerts(doc):
        name = a["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no case where it stays quiet"


def test_each_alert_links_its_runbook_section():
    text = OPERATIONS.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#{2,4} (.+)$", text, flags=re.M)
    }
    doc = rule()
    names = [a["alert"] for a in alerts(doc)]
    assert {"BlendScalerSignalStale", "BlendScalerUpstreamErrors", "BlendScalerUpstreamThrottled",
            "BlendScalerUnavailableAnswers", "BlendScalerDown", "BlendScalerNotReady",
            "BlendScalerDeadLetterGrowing", "BlendScalerPinnedAtMaxReplicas"} <= set(names)
    base = "https://github.com/blend-scaler/blend-scaler/blob/main/docs/operations.md#"
    for a in alerts(doc):
        url = a["annotations"]["runbook_url"]
        assert url.startswith(base), url
        anchor = url[len(base):]
        assert anchor in anchors, f"{a['alert']}: docs/operations.md has no section #{anchor}"
        assert a["annotations"].get("summary"), a["alert"]


def test_selector_and_alert_labels_are_configurable(tmp_path):
    doc = rule({"metrics": {"prometheusRule": {
        "enabled": True, "selector": 'job="scaler"', "alertLabels": {"team": "platform"},
        "runbookUrl": "https://wiki.example.com/ops", "labels": {"release": "prometheus"}}}})
    assert doc["metadata"]["labels"]["release"] == "prometheus"
    for a in alerts(doc):
        assert a["labels"]["team"] == "platform"
        assert a["annotations"]["runbook_url"].startswith("https://wiki.example.com/ops#")
        if "blend_scaler_" in a["expr"] or "up{" in a["expr"]:
            assert 'job="scaler"' in a["expr"], a["expr"]
            assert 'namespace="blend-scaler", job=~' not in a["expr"], a["expr"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    out = run("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_configmap_carries_the_chart_file_unchanged():
    docs = d.manifests_of(d.helm_render({"metrics": {"grafanaDashboard": {"enabled": True, "labelValue": "yes",
                                                                            "annotations": {"grafana_folder": "Scaling"}}}}))
    cms = [x for x in docs if x.get("kind") == "ConfigMap" and "grafana_dashboard" in x["metadata"].get("labels", {})]
    assert len(cms) == 1
    cm = cms[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "yes"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Scaling"
    shipped = (d.CHART / "files" / "dashboard.json").read_text().rstrip("\n")
    assert cm["data"]["blend-scaler.json"] == shipped
    assert d.validate_docs(docs) == []
    defaults = d.manifests_of(d.helm_render({}))
    assert not [x for x in defaults if x.get("kind") == "ConfigMap"], "the dashboard is off by default"


def test_decisions_show_no_query_text_unless_the_value_is_set():
    def env(values):
        docs = d.manifests_of(d.helm_render(values))
        deploy = [x for x in docs if x.get("kind") == "Deployment"][0]
        return {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0].get("env", [])}

    assert "BLEND_SCALER_DECISIONS_SHOW_QUERIES" not in env({})
    assert env({"scaler": {"decisionsShowQueries": True}})["BLEND_SCALER_DECISIONS_SHOW_QUERIES"] == "true"
    assert d.schema_errors({"scaler": {"decisionsShowQueries": "yes"}}), "a non-boolean is refused"
