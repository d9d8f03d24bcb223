"""deploy/flux: every kustomization builds, every object validates, the
Kustomizations apply in order, and the blend-scaler HelmRelease's values
render through the chart."""

from __future__ import annotations

import pytest

import deploylib as d

KUSTOMIZE_DIRS = d.kustomization_dirs()


def test_kustomization_dirs_found():
    rel = {str(p.relative_to(d.FLUX)) for p in KUSTOMIZE_DIRS}
    assert {
        "clusters/production",
        "infrastructure/controllers",
        "infrastructure/configs",
        "apps/production",
    } <= rel


@pytest.mark.parametrize("directory", KUSTOMIZE_DIRS, ids=lambda p: str(p.relative_to(d.FLUX)))
def test_kustomize_builds_and_validates(directory, crd_table):
    docs, errors = d.kustomize_build(directory)
    assert errors == []
    assert docs
    assert d.validate_docs(docs) == []


def test_flux_objects_after_substitution_validate(flux_objects, crd_table):
    objects, errors = flux_objects
    assert errors == [], "undefined ${VAR} or failed build"
    for name, docs in objects.items():
        assert d.validate_docs(docs) == [], name


def test_kustomization_order():
    cluster = d.flux_cluster_objects()
    ks = {k.name: k for k in d.flux_kustomizations(cluster)}
    assert set(ks) == {"infra-controllers", "infra-configs", "blend-scaler", "applications"}
    assert ks["infra-controllers"].depends_on == []
    assert ks["infra-configs"].depends_on == ["infra-controllers"]
    assert ks["applications"].depends_on == ["infra-configs"]
    assert ks["blend-scaler"].depends_on == ["infra-controllers"]
    sources = {x["metadata"]["name"] for x in cluster if x["kind"] == "GitRepository"}
    for k in ks.values():
        assert k.source in sources
        assert (k.path / "kustomization.yaml").is_file(), f"{k.name}: path {k.path} has no kustomization.yaml"
        assert k.doc["spec"]["prune"] is True


def _find(objects, kind, name):
    for docs in objects.values():
        for x in docs:
            if x.get("kind") == kind and x["metadata"]["name"] == name:
                return x
    raise AssertionError(f"{kind} {name} not found in deploy/flux")


def test_helm_releases(flux_objects):
    objects, _ = flux_objects
    repos = {x["metadata"]["name"] for docs in objects.values() for x in docs if x["kind"] == "HelmRepository"}
    for name in ("keda", "dapr", "otel-collector", "blend-scaler"):
        hr = _find(objects, "HelmRelease", name)
        assert hr["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
        ref = hr["spec"]["chart"]["spec"]["sourceRef"]
        if ref["kind"] == "HelmRepository":
            assert ref["name"] in repos
    dapr = _find(objects, "HelmRelease", "dapr")["spec"]["values"]
    assert dapr["global"]["ha"]["enabled"] is True
    assert dapr["global"]["mtls"]["enabled"] is True and dapr["global"]["logAsJson"] is True
    for part in ("dapr_placement", "dapr_sentry", "dapr_operator"):
        assert dapr[part]["replicaCount"] == 3
    otel = _find(objects, "HelmRelease", "otel-collector")["spec"]["values"]["config"]
    pipelines = otel["service"]["pipelines"]
    assert pipelines["traces"] == {"receivers": ["otlp"], "processors": ["memory_limiter", "batch", "resource"], "exporters": ["azuremonitor"]}
    assert pipelines["metrics"]["receivers"] == ["otlp", "prometheus"]
    assert pipelines["metrics"]["exporters"] == ["azuremonitor", "prometheus"]
    assert pipelines["logs"]["exporters"] == ["azuremonitor"]
    # Flux must not eat the collector's own ${env:...} reference.
    assert otel["exporters"]["azuremonitor"]["connection_string"] == "${env:APPLICATIONINSIGHTS_CONNECTION_STRING}"


def test_blend_scaler_release_renders_through_the_chart(flux_objects, crd_table):
    objects, _ = flux_objects
    hr = _find(objects, "HelmRelease", "blend-scaler")
    spec = hr["spec"]["chart"]["spec"]
    assert spec["chart"] == "./charts/blend-scaler" and spec["sourceRef"]["kind"] == "GitRepository"
    assert (d.REPO / spec["chart"] / "Chart.yaml").is_file()
    values = hr["spec"]["values"]
    assert d.schema_errors(values) == []
    docs = d.manifests_of(d.helm_render(values))
    assert d.validate_docs(docs) == []
    sa = next(x for x in docs if x["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == "00000000-0000-0000-0000-000000000001"
    assert hr["metadata"]["namespace"] == d.RELEASE_NAMESPACE


def test_dapr_components(flux_objects):
    objects, _ = flux_objects
    comps = {x["metadata"]["name"]: x for x in objects["infra-configs"] if x["kind"] == "Component"}
    assert comps["order-pubsub"]["spec"]["type"] == "pubsub.azure.servicebus.topics"
    assert comps["order-state"]["spec"]["type"] == "state.azure.cosmosdb"
    assert comps["document-storage"]["spec"]["type"] == "bindings.azure.blobstorage"
    assert comps["azure-keyvault"]["spec"]["type"] == "secretstores.azure.keyvault"
    for name in ("order-pubsub", "order-state", "document-storage"):
        assert comps[name]["auth"]["secretStore"] == "azure-keyvault"


def test_network_policies_present(flux_objects):
    objects, _ = flux_objects
    nps = [x for x in objects["infra-configs"] if x["kind"] == "NetworkPolicy"]
    assert any(x["metadata"]["name"] == "default-deny-ingress" for x in nps)


def test_ci_production_values_are_the_helm_release_values(flux_objects):
    """charts/blend-scaler/ci/production-values.yaml is what the chart is
    linted and snapshotted with for production: it must not drift from Flux."""
    import yaml

    objects, _ = flux_objects
    hr = _find(objects, "HelmRelease", "blend-scaler")
    ci = yaml.safe_load((d.CHART_CI / "production-values.yaml").read_text())
    assert ci == hr["spec"]["values"]
