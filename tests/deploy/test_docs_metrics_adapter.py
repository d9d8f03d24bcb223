"""docs/metrics-adapter.md, "Helm chart": its examples are what the chart and
the binary accept, and the failure it quotes is the one the chart prints."""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml

import deploylib as d
from fakekube import FakeKube
from test_chart_external_metrics import KEDA, REGISTERED, one, render

DOC = d.REPO / "docs" / "metrics-adapter.md"


def section(title: str) -> str:
    """The text of one `##`/`###` section, up to the next heading of its level or above."""
    text = DOC.read_text()
    level = re.match(r"#+", title).group(0)
    start = text.index(title + "\n")
    rest = text[start + len(title) + 1 :]
    stop = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[: stop.start()] if stop else rest


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def example_docs():
    found = blocks(section("### A BlendedMetric and the HPA that uses it"), "yaml")
    assert len(found) == 1
    return found[0], d.load_docs(found[0])


def test_the_helm_chart_section_exists_and_keeps_the_earlier_sections():
    text = DOC.read_text()
    for heading in ("## When to use which", "## A BlendedMetric and its HPA", "## What the API answers", "## Troubleshooting", "## Helm chart"):
        assert f"\n{heading}\n" in text, heading
    chart = section("## Helm chart")
    for needle in ("registerAPIService", "kubectl get --raw", "keda-operator-metrics-apiserver", "konnectivity-agent"):
        assert needle in chart


def test_the_example_blendedmetric_matches_the_crd_the_chart_installs(crd_table):
    _, docs = example_docs()
    bm = one(docs, "BlendedMetric")
    crd = one(render({"externalMetrics": {"enabled": True}}), "CustomResourceDefinition")
    version = next(v for v in crd["spec"]["versions"] if v["served"])
    assert bm["apiVersion"] == f"{crd['spec']['group']}/{version['name']}" and crd["spec"]["scope"] == "Namespaced"
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # The API server allows these three at the root of every object, listed or not.
    schema.setdefault("properties", {}).update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
    )
    validator = jsonschema.Draft7Validator(d._to_jsonschema(schema))
    assert [e.message for e in validator.iter_errors(bm)] == []
    assert d._cel_errors(version["schema"]["openAPIV3Schema"], bm, "") == []
    # Negative control: the CRD schema is strict about unknown fields in spec.
    broken = copy.deepcopy(bm)
    broken["spec"]["fallbak"] = {"replicas": 1}
    assert list(validator.iter_errors(broken)), "the CRD schema accepted an unknown spec field"


def test_the_example_hpa_reads_the_blendedmetric_exactly():
    _, docs = example_docs()
    bm, hpa = one(docs, "BlendedMetric"), one(docs, "HorizontalPodAutoscaler")
    assert d.validate_builtin(hpa) == []
    assert hpa["metadata"]["namespace"] == bm["metadata"]["namespace"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    ext = metric["external"]
    assert ext["metric"]["name"] == bm["spec"]["metadata"].get("metricName", "blended-replicas")
    assert ext["metric"]["selector"] == {"matchLabels": {"blend-scaler.io/name": bm["metadata"]["name"]}}
    assert ext["target"] == {"type": "AverageValue", "averageValue": "1"}


def test_the_example_passes_blend_scaler_check():
    text, _ = example_docs()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "example.yaml")
        path.write_text(text)
        code, out = d.run_check(path)
        assert code == 0, out
        assert "BlendedMetric production/order-processor: ok" in out
        # Negative control: the same file with a key only KEDA resolves.
        path.write_text(text.replace("credential: orders", "connectionFromEnv: SERVICEBUS_CONNECTION"))
        code, out = d.run_check(path)
        assert code != 0 and "connectionFromEnv" in out


def _set_flags(command: str) -> dict:
    values: dict = {}
    for key, raw in re.findall(r"--set ([A-Za-z0-9_.]+)=(\S+)", command):
        value = {"true": True, "false": False}.get(raw, raw)
        node = values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return values


def test_the_documented_install_command_and_ci_values_render_the_registered_adapter(crd_table):
    [command] = blocks(section("### Values"), "bash")
    values = _set_flags(command)
    assert values == yaml.safe_load((d.CHART_CI / "external-metrics-values.yaml").read_text())
    docs = render(values)
    assert d.validate_docs(docs) == []
    assert one(docs, "APIService")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    # Without the three certManager flags: the chart-generated CA.
    plain = {"externalMetrics": {k: v for k, v in values["externalMetrics"].items() if k != "certManager"}}
    assert one(render(plain), "APIService")["spec"]["caBundle"]


def test_the_documented_network_policy_values_are_accepted():
    [snippet] = blocks(section("### NetworkPolicy: who reaches port 6443"), "yaml")
    values = yaml.safe_load(snippet)
    values["externalMetrics"]["enabled"] = True
    rules = one(render(values), "NetworkPolicy")["spec"]["ingress"]
    adapter = [r for r in rules if r["ports"] == [{"port": "ext-metrics", "protocol": "TCP"}]]
    assert adapter == [{"ports": [{"port": "ext-metrics", "protocol": "TCP"}], "from": values["externalMetrics"]["networkPolicy"]["from"]}]


def test_the_quoted_keda_conflict_is_the_message_the_chart_prints():
    [quoted] = blocks(section("### The KEDA conflict"), "")
    kube = FakeKube()
    try:
        kube.put_apiservice(KEDA)
        import helm_python as helm

        with pytest.raises(helm.HelmError) as err:
            kube.render(REGISTERED)
    finally:
        kube.close()
    def flat(text):
        # The template position moves with every edit above the check; the words must not.
        return re.sub(r"\(blend-scaler/templates/[^)]*\)", "(…)", " ".join(text.split()))

    assert quoted.startswith("Error: ")
    assert flat(quoted[len("Error: ") :]) == flat(str(err.value))
