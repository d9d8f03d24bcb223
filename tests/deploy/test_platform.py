"""What a fresh cluster needs beyond schemas: workloads beside their
ScaledObjects, a Prometheus behind every trigger's serverAddress, the scaler
out of the controllers' wait chain, KEDA in HA, fallbacks that keep healthy
signals, and the Dapr resiliency and tracing configuration."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
import yaml

import deploylib as d


def _all(objects):
    return [x for docs in objects.values() for x in docs]


def _kind(objects, kind):
    return [x for x in _all(objects) if x.get("kind") == kind]


def _hr(objects, name):
    return next(x for x in _kind(objects, "HelmRelease") if x["metadata"]["name"] == name)


@pytest.fixture(scope="module")
def objects(flux_objects):
    objs, errors = flux_objects
    assert errors == []
    return objs


# ---- 14.3 workloads beside their ScaledObjects ---------------------------------

APPS = ["order-service", "order-processor", "api-gateway", "shipping-service", "dlq-processor"]


def test_apps_follow_the_base_and_overlay_layout():
    for app in APPS:
        assert (d.FLUX / "apps" / "base" / app / "kustomization.yaml").is_file(), app
    overlay = yaml.safe_load((d.FLUX / "apps" / "production" / "kustomization.yaml").read_text())
    assert sorted(overlay["resources"]) == sorted(f"../base/{a}" for a in APPS)


def scaled_object_target_errors(docs: list[dict]) -> list[str]:
    """A ScaledObject whose target Deployment is not applied with it, or whose
    cpu/memory triggers have no container requests to divide by (KEDA's
    admission webhook refuses both)."""
    deployments = {(x["metadata"].get("namespace"), x["metadata"]["name"]): x for x in docs if x.get("kind") == "Deployment"}
    errors = []
    for so in (x for x in docs if x.get("kind") == "ScaledObject"):
        ns, ref = so["metadata"].get("namespace"), so["spec"]["scaleTargetRef"]
        target = deployments.get((ns, ref["name"]))
        if ref.get("kind", "Deployment") != "Deployment" or target is None:
            errors.append(f"{d.ident(so)}: target {ref['name']} is not a Deployment applied beside it")
            continue
        for t in so["spec"]["triggers"]:
            if t["type"] in ("cpu", "memory"):
                for c in target["spec"]["template"]["spec"]["containers"]:
                    if t["type"] not in ((c.get("resources") or {}).get("requests") or {}):
                        errors.append(f"{d.ident(so)}: {t['type']} trigger but container {c['name']} has no {t['type']} request")
    return errors


def test_every_scaled_object_target_is_deployed_beside_it(objects):
    assert scaled_object_target_errors(objects["applications"]) == []
    targets = {so["spec"]["scaleTargetRef"]["name"] for so in _kind(objects, "ScaledObject")}
    assert targets == set(APPS)


def test_the_target_check_fails_without_the_deployment(objects):
    docs = [x for x in objects["applications"] if not (x["kind"] == "Deployment" and x["metadata"]["name"] == "api-gateway")]
    assert any("api-gateway" in e for e in scaled_object_target_errors(docs))


@pytest.mark.parametrize("app", APPS)
def test_app_has_its_service_account_probes_and_resources(objects, app):
    docs = objects["applications"]
    dep = next(x for x in docs if x["kind"] == "Deployment" and x["metadata"]["name"] == app)
    pod = dep["spec"]["template"]
    sa = next(x for x in docs if x["kind"] == "ServiceAccount" and x["metadata"]["name"] == pod["spec"]["serviceAccountName"])
    assert sa["metadata"]["namespace"] == "production"
    assert re.fullmatch(r"[0-9a-f-]{36}", sa["metadata"]["annotations"]["azure.workload.identity/client-id"])
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    for c in pod["spec"]["containers"]:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c.get(probe), f"{app}: {probe}"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        assert not c["image"].startswith("${") and "/" in c["image"] and ":" in c["image"]
    ann = pod["metadata"].get("annotations") or {}
    if ann.get("dapr.io/enabled") == "true":
        assert ann["dapr.io/app-id"] == app
        assert ann["dapr.io/config"] in {x["metadata"]["name"] for x in _kind(objects, "Configuration")}
        assert ann.get("dapr.io/metrics-port"), "the Prometheus dapr job keeps pods by this annotation"


def test_every_app_service_account_is_federated_in_bicep(objects):
    ident = (d.BICEP / "modules" / "identity.bicep").read_text()
    main = (d.BICEP / "main.bicep").read_text()
    assert "system:serviceaccount:${appNamespace}:${sa}" in ident
    m = re.search(r"param appServiceAccounts array = \[(.*?)\]", main, re.S)
    assert m, "main.bicep: param appServiceAccounts"
    federated = set(re.findall(r"'([a-z0-9-]+)'", m.group(1)))
    sas = {x["metadata"]["name"] for x in objects["applications"] if x["kind"] == "ServiceAccount"}
    assert sas == federated


# ---- 14.4 a Prometheus the triggers can query ------------------------------------


def prometheus_address_errors(objects) -> list[str]:
    """Every trigger serverAddress names a Service the tree applies, on that
    port, in front of pods a Prometheus HelmRelease creates."""
    services = {(x["metadata"]["namespace"], x["metadata"]["name"]): x for x in _kind(objects, "Service")}
    prometheus_releases = {
        x["metadata"]["namespace"]
        for x in _kind(objects, "HelmRelease")
        if x["spec"]["chart"]["spec"]["chart"] in ("kube-prometheus-stack", "prometheus")
    }
    errors = []
    for where, meta in d.external_triggers(_all(objects)):
        addr = meta.get("serverAddress")
        if not addr:
            continue
        u = urlparse(addr)
        parts = u.hostname.split(".")
        name, ns = parts[0], parts[1] if len(parts) > 1 else None
        svc = services.get((ns, name))
        if svc is None:
            errors.append(f"{where}: serverAddress {addr}: no Service {ns}/{name} in deploy/flux")
            continue
        if (u.port or 80) not in [p["port"] for p in svc["spec"]["ports"]]:
            errors.append(f"{where}: Service {ns}/{name} has no port {u.port}")
        if ns not in prometheus_releases:
            errors.append(f"{where}: no Prometheus HelmRelease in namespace {ns}")
    return errors


def test_a_prometheus_answers_every_server_address(objects):
    assert d.external_triggers(_all(objects))
    assert any("serverAddress" in m for _, m in d.external_triggers(_all(objects)))
    assert prometheus_address_errors(objects) == []


def test_the_prometheus_check_fails_without_the_service(objects):
    stripped = {k: [x for x in v if not (x["kind"] == "Service" and x["metadata"]["name"] == "prometheus-server")] for k, v in objects.items()}
    assert prometheus_address_errors(stripped)


def test_prometheus_service_selects_the_operator_pods(objects):
    flows = yaml.safe_load((d.DEPLOY / "network-flows.yaml").read_text())
    svc = next(x for x in _kind(objects, "Service") if x["metadata"]["name"] == "prometheus-server")
    pod_labels = flows["components"]["prometheus"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    values = _hr(objects, "kube-prometheus-stack")["spec"]["values"]
    # cleanPrometheusOperatorObjectNames + fullnameOverride make the CR (and label) "prometheus".
    assert values["fullnameOverride"] == svc["spec"]["selector"]["operator.prometheus.io/name"]
    assert values["cleanPrometheusOperatorObjectNames"] is True


def test_prometheus_scrapes_dapr_sidecars_and_reads_every_service_monitor(objects):
    spec = _hr(objects, "kube-prometheus-stack")["spec"]["values"]["prometheus"]["prometheusSpec"]
    dapr = next(j for j in spec["additionalScrapeConfigs"] if j["job_name"] == "dapr")
    keep = dapr["relabel_configs"][0]
    assert keep == {"source_labels": ["__meta_kubernetes_pod_annotation_dapr_io_metrics_port"], "action": "keep", "regex": ".+"}
    assert dapr["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False


def test_service_monitors_for_blend_scaler_and_keda(objects):
    scaler = _hr(objects, "blend-scaler")["spec"]["values"]
    assert scaler["metrics"]["serviceMonitor"]["enabled"] is True
    docs = d.manifests_of(d.helm_render(scaler))
    assert [x["kind"] for x in docs].count("ServiceMonitor") == 1
    keda = _hr(objects, "keda")["spec"]["values"]["prometheus"]
    for part in ("operator", "metricServer", "webhooks"):
        assert keda[part]["enabled"] is True and keda[part]["serviceMonitor"]["enabled"] is True, part
    assert {"name": "kube-prometheus-stack", "namespace": "monitoring"} in _hr(objects, "keda")["spec"]["dependsOn"]


def test_scaler_may_reach_the_prometheus_it_queries(objects):
    scaler = _hr(objects, "blend-scaler")["spec"]["values"]["scaler"]
    allow, private = scaler["allowUpstream"], scaler["allowPrivateUpstream"]
    for _, meta in d.external_triggers(_all(objects)):
        if meta.get("serverAddress"):
            url = urlparse(meta["serverAddress"])
            default = {"http": 80, "https": 443}[url.scheme]
            # Allowlist entries are host[:port]; without a port only the scheme's default.
            entry = url.hostname if url.port in (None, default) else f"{url.hostname}:{url.port}"
            assert entry in allow, entry
            # A ClusterIP Service resolves to a private address: allowed by name.
            assert url.hostname in private


# ---- 14.5 one image cannot block the platform ----------------------------------


def test_scaler_release_is_outside_the_controllers_wait_chain(objects):
    cluster = d.flux_cluster_objects()
    ks = {k.name: k for k in d.flux_kustomizations(cluster)}
    owner = [name for name, docs in objects.items() if any(x["kind"] == "HelmRelease" and x["metadata"]["name"] == "blend-scaler" for x in docs)]
    assert owner == ["blend-scaler"]
    assert ks["blend-scaler"].depends_on == ["infra-controllers"]
    # Nothing waits for it: its failure stops no other Kustomization.
    assert all("blend-scaler" not in k.depends_on for k in ks.values())
    assert "dependsOn" not in _hr(objects, "blend-scaler")["spec"]


# ---- 14.6 KEDA in HA ------------------------------------------------------------


def test_keda_metrics_apiserver_and_webhooks_run_two_replicas_with_pdbs(objects):
    values = _hr(objects, "keda")["spec"]["values"]
    assert values["metricsServer"]["replicaCount"] >= 2
    assert values["webhooks"]["replicaCount"] >= 2
    pdb = values["podDisruptionBudget"]
    for part, replicas in (("metricServer", values["metricsServer"]["replicaCount"]), ("webhooks", values["webhooks"]["replicaCount"])):
        assert 0 < pdb[part]["minAvailable"] < replicas, part


def test_dapr_resiliency_and_tracing_configuration(objects):
    res = next(x for x in _kind(objects, "Resiliency"))
    pol = res["spec"]["policies"]
    assert pol["retries"] and pol["circuitBreakers"] and pol["timeouts"]
    targets = res["spec"]["targets"]
    for comp in ("order-pubsub", "order-state", "document-storage"):
        out = targets["components"][comp]["outbound"]
        assert out["retry"] in pol["retries"] and out["circuitBreaker"] in pol["circuitBreakers"]
    assert targets["apps"]["shipping-service"]["circuitBreaker"] in pol["circuitBreakers"]
    conf = next(x for x in _kind(objects, "Configuration") if x["metadata"]["name"] == "tracing")
    otel = conf["spec"]["tracing"]["otel"]
    host, port = otel["endpointAddress"].rsplit(":", 1)
    assert host.split(".")[:2] == ["otel-collector", "monitoring"] and port == "4317" and otel["protocol"] == "grpc"
    collector = _hr(objects, "otel-collector")["spec"]["values"]["config"]
    assert "otlp" in collector["service"]["pipelines"]["traces"]["receivers"]


# ---- 14.7 fallback that keeps healthy signals --------------------------------------


def test_blend_scaler_scaled_objects_keep_higher_current_replicas_on_fallback(objects):
    for so in _kind(objects, "ScaledObject"):
        types = {t["type"] for t in so["spec"]["triggers"]}
        if "external" in types:
            assert so["spec"]["fallback"]["behavior"] == "currentReplicasIfHigher", so["metadata"]["name"]
        else:
            assert "fallback" not in so["spec"], f"{so['metadata']['name']}: KEDA refuses fallback with only cpu/memory triggers"
    doc = (d.REPO / "docs" / "migration.md").read_text()
    assert "currentReplicasIfHigher" in doc and "2.17" in doc


# ---- the newcomer's walk in docs/deploy.md -----------------------------------------


def test_deploy_doc_walks_from_bicep_to_a_scaling_order_processor_in_order():
    doc = (d.REPO / "docs" / "deploy.md").read_text()
    walk = doc.split("## From `az deployment group create` to a scaling order-processor", 1)[1].split("\n## ", 1)[0]
    steps = [
        "az deployment group create",
        "cluster-settings.yaml",
        "docker push",
        "flux bootstrap git",
        "flux get kustomizations",
        "v1beta1.external.metrics.k8s.io",
        "order-processing/messages",
        "keda-hpa-order-processor-scaler --watch",
        "blend-scaler explain",
    ]
    positions = [walk.find(s) for s in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions) if p < 0]
    assert positions == sorted(positions), "the walk-through is out of order"
    # The names it uses are the tree's names.
    assert "order-processor-scaler" in (d.FLUX / "apps" / "base" / "order-processor" / "scaledobject.yaml").read_text()
    for k in ("infra-controllers", "infra-configs", "blend-scaler", "applications"):
        assert k in walk


def test_deploy_doc_covers_the_aks_specifics():
    doc = (d.REPO / "docs" / "deploy.md").read_text()
    aks = doc.split("## AKS specifics", 1)[1].split("\n## ", 1)[0]
    # The add-on: its namespace, the chart value, the versions that refuse fallback with cpu/memory.
    assert "kube-system" in aks and "networkPolicy.keda.namespace" in aks and "2.14 to 2.16" in aks and "2.17" in aks
    # UDR egress: the hosts the platform itself needs beyond AKS's own list.
    for host in ("servicebus.windows.net", "login.microsoftonline.com", "ghcr.io", "docker.io", "quay.io", "applicationinsights.azure.com"):
        assert host in aks, host
    assert "Network Contributor" in aks and "network-roles.bicep" in aks
    assert "multiTenancy.enforce=false" in aks
    assert (d.CHART_CI / "aks-keda-addon-values.yaml").is_file()
