"""The Helm chart: lint, render, schema, the rendered snapshots, and the
properties the issue asks of its objects."""

from __future__ import annotations

import difflib

import pytest

import deploylib as d
import render

SETS = list(d.values_sets())


def by_kind(docs, kind):
    return [x for x in docs if x.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_of(docs):
    return {e["name"]: e for e in container(docs).get("env", [])}


def test_ci_values_files_exist():
    assert len(d.ci_values_files()) >= 4, "chart ci/ should cover TLS, cert-manager, Key Vault and production values"


@pytest.mark.parametrize("name", SETS)
def test_helm_lint(values_sets, name):
    assert d.helm_lint(values_sets[name]) == []


@pytest.mark.parametrize("name", SETS)
def test_render_validates(renders, crd_table, name):
    docs = d.manifests_of(renders[name])
    assert docs, "render produced no objects"
    assert d.validate_docs(docs) == []


@pytest.mark.parametrize("name", SETS)
def test_rendered_snapshot_is_current(renders, name):
    """charts/blend-scaler/rendered/ is committed so template changes show in review."""
    for suffix, text in (
        (".yaml", d.rendered_text(renders[name])),
        (".NOTES.txt", d.notes_of(renders[name]).rstrip("\n") + "\n"),
    ):
        path = d.RENDERED / f"{name}{suffix}"
        assert path.exists(), f"{path.relative_to(d.REPO)} missing: run scripts/validate-deploy --update"
        committed = path.read_text()
        if committed != text:
            diff = "".join(
                difflib.unified_diff(
                    committed.splitlines(True), text.splitlines(True), f"committed/{path.name}", f"render/{path.name}"
                )
            )
            pytest.fail(f"{path.relative_to(d.REPO)} is stale (scripts/validate-deploy --update):\n{diff[:6000]}")


def test_no_stale_snapshot_files():
    expected = {p.name for p in render.expected_files()}
    present = {p.name for p in d.RENDERED.iterdir()}
    assert present - expected == set(), "rendered/ holds files no values set produces"


def test_schema_rejects_bad_values():
    assert d.schema_errors({}) == []
    for bad in (
        {"replicaCount": 0},
        {"replicaCount": "two"},
        {"tls": {"source": "acme"}},
        {"scaler": {"logFormat": "xml"}},
        {"scaler": {"refreshInterval": "five seconds"}},
        {"securityContext": {"readOnlyRootFilesystem": False}},
        {"imageTag": "typo-at-top-level"},
        {"workloadIdentity": {"clientId": "not-a-guid"}},
    ):
        assert d.schema_errors(bad), f"values.schema.json accepted {bad}"


def test_render_refuses_incomplete_tls():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="tls.secret.name"):
        d.helm_render({"tls": {"enabled": True, "source": "secret"}})


# ---- properties of the objects -------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_pod_hardening(renders, values_sets, name):
    docs = d.manifests_of(renders[name])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    sc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    adapter = bool((values_sets[name].get("externalMetrics") or {}).get("enabled"))
    # Only the metrics adapter calls the Kubernetes API (test_chart_external_metrics.py).
    assert pod["automountServiceAccountToken"] is adapter
    assert c["args"] == ["serve"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 9090, "http-metrics": 9464, **({"ext-metrics": 6443} if adapter else {})}
    env = env_of(docs)
    assert env["BLEND_SCALER_GRPC_ADDR"]["value"] == "0.0.0.0:9090"
    assert env["BLEND_SCALER_HTTP_ADDR"]["value"] == "0.0.0.0:9464"


def test_grpc_probes_without_tls(renders):
    c = container(d.manifests_of(renders["default"]))
    assert c["livenessProbe"]["grpc"] == {"port": 9090, "service": "liveness"}
    assert c["readinessProbe"]["grpc"] == {"port": 9090, "service": "readiness"}


@pytest.mark.parametrize("name", ["tls-secret-values", "cert-manager-csi-values"])
def test_http_probes_with_tls(renders, name):
    """The kubelet's gRPC probe cannot speak TLS, so auto mode switches to HTTP."""
    c = container(d.manifests_of(renders[name]))
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(d.manifests_of(renders[name]))
    assert env["BLEND_SCALER_TLS_CERT"]["value"].endswith("tls.crt")
    assert env["BLEND_SCALER_TLS_KEY"]["value"].endswith("tls.key")
    assert "BLEND_SCALER_TLS_CLIENT_CA" in env  # both ci files enable mTLS


def test_headless_service_with_metrics_port(renders):
    svc = one(d.manifests_of(renders["default"]), "Service")
    assert svc["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == {"grpc": 9090, "http-metrics": 9464}
    assert svc["metadata"]["name"] == "blend-scaler"


def test_workload_identity(renders):
    docs = d.manifests_of(renders["production-values"])
    sa = one(docs, "ServiceAccount")
    pod = one(docs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == "00000000-0000-0000-0000-000000000001"
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    # off by default: no label, no annotation
    default = d.manifests_of(renders["default"])
    assert "azure.workload.identity/use" not in one(default, "Deployment")["spec"]["template"]["metadata"]["labels"]


def test_pdb_only_with_several_replicas(renders):
    pdb = one(d.manifests_of(renders["default"]), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert by_kind(d.manifests_of(renders["minimal-values"]), "PodDisruptionBudget") == []


def test_network_policy(renders):
    np = one(d.manifests_of(renders["default"]), "NetworkPolicy")
    rules = np["spec"]["ingress"]
    grpc = [r for r in rules if r["ports"][0]["port"] == "grpc"]
    metrics = [r for r in rules if r["ports"][0]["port"] == "http-metrics"]
    assert len(grpc) == 1 and len(metrics) == 1 and len(rules) == 2
    assert grpc[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
    assert metrics[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert "Egress" in np["spec"]["policyTypes"]
    assert by_kind(d.manifests_of(renders["minimal-values"]), "NetworkPolicy") == []


def test_service_monitor_optional(renders):
    assert by_kind(d.manifests_of(renders["default"]), "ServiceMonitor") == []
    sm = one(d.manifests_of(renders["production-values"]), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "http-metrics"


def test_tls_from_secret(renders):
    docs = d.manifests_of(renders["tls-secret-values"])
    vols = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "blend-scaler-tls"
    assert {i["path"] for i in vols["tls"]["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}
    env = env_of(docs)
    assert env["BLEND_SCALER_CREDENTIAL_ORDERS"]["valueFrom"]["secretKeyRef"] == {
        "name": "blend-scaler-servicebus",
        "key": "orders-connection",
    }
    assert env["BLEND_SCALER_CREDENTIAL_PAYMENTS"]["valueFrom"]["secretKeyRef"]["key"] == "payments"
    # Who may use each credential: listed namespaces only, none when not listed.
    assert env["BLEND_SCALER_CREDENTIAL_ORDERS_NAMESPACES"]["value"] == "orders,payments"
    assert "BLEND_SCALER_CREDENTIAL_PAYMENTS_NAMESPACES" not in env


def test_namespace_access_settings(renders):
    prod = env_of(d.manifests_of(renders["production-values"]))
    assert prod["BLEND_SCALER_WORKLOAD_IDENTITY_NAMESPACES"]["value"] == "production"
    default = env_of(d.manifests_of(renders["default"]))
    # Workload identity is opt-in per namespace: nobody by default.
    assert "BLEND_SCALER_WORKLOAD_IDENTITY_NAMESPACES" not in default
    # The in-cluster Prometheus is the one server, for every namespace, with no headers.
    assert default["BLEND_SCALER_PROMETHEUS_SERVER_IN_CLUSTER"]["value"] == "http://prometheus-server.monitoring:9090"
    assert default["BLEND_SCALER_PROMETHEUS_SERVER_IN_CLUSTER_NAMESPACES"]["value"] == "*"
    assert "BLEND_SCALER_PROMETHEUS_SERVER_IN_CLUSTER_HEADERS" not in default
    mimir = env_of(d.manifests_of(renders["keyvault-credentials-values"]))
    assert mimir["BLEND_SCALER_PROMETHEUS_SERVER_MIMIR_NAMESPACES"]["value"] == "orders,payments"
    assert mimir["BLEND_SCALER_PROMETHEUS_SERVER_MIMIR_HEADERS"]["value"] == "X-Scope-OrgID={namespace}"


def test_tls_from_cert_manager_csi(renders):
    docs = d.manifests_of(renders["cert-manager-csi-values"])
    vols = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    attrs = vols["tls"]["csi"]["volumeAttributes"]
    assert vols["tls"]["csi"]["driver"] == "csi.cert-manager.io"
    assert attrs["csi.cert-manager.io/issuer-name"] == "platform-ca"
    assert "blend-scaler.blend-scaler.svc.cluster.local" in attrs["csi.cert-manager.io/dns-names"].split(",")
    assert vols["client-ca"]["secret"]["secretName"] == "keda-client-ca"
    assert env_of(docs)["BLEND_SCALER_TLS_CLIENT_CA"]["value"] == "/etc/blend-scaler/client-ca/ca.crt"


def test_credentials_from_key_vault(renders):
    docs = d.manifests_of(renders["keyvault-credentials-values"])
    spc = one(docs, "SecretProviderClass")
    assert spc["spec"]["provider"] == "azure"
    assert spc["spec"]["parameters"]["keyvaultName"] == "kv-cloudnative-prod"
    assert spc["spec"]["parameters"]["clientID"] == "00000000-0000-0000-0000-000000000001"
    synced = spc["spec"]["secretObjects"][0]
    assert {x["key"] for x in synced["data"]} == {"orders", "legacy"}
    vols = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["secrets-store"]["csi"]["volumeAttributes"]["secretProviderClass"] == spc["metadata"]["name"]
    env = env_of(docs)
    assert env["BLEND_SCALER_CREDENTIAL_LEGACY_BUS"]["valueFrom"]["secretKeyRef"] == {
        "name": synced["secretName"],
        "key": "legacy",
    }


@pytest.mark.parametrize("name", SETS)
def test_notes_example_is_a_valid_scaledobject(renders, crd_table, name):
    example = d.load_docs(d.notes_example(d.notes_of(renders[name])))
    assert any(x["kind"] == "ScaledObject" for x in example)
    assert d.validate_docs(example) == []
    triggers = d.external_triggers(example)
    assert len(triggers) == 1
    assert triggers[0][1]["scalerAddress"] == "blend-scaler.blend-scaler.svc.cluster.local:9090"


def test_notes_example_tls_uses_trigger_authentication(renders):
    example = d.load_docs(d.notes_example(d.notes_of(renders["tls-secret-values"])))
    ta = one(example, "TriggerAuthentication")
    params = {p["parameter"] for p in ta["spec"]["secretTargetRef"]}
    assert params == {"caCert", "tlsClientCert", "tlsClientKey"}
    so = one(example, "ScaledObject")
    assert so["spec"]["triggers"][0]["authenticationRef"]["name"] == ta["metadata"]["name"]


def test_readme_documents_every_top_level_value():
    readme = (d.CHART / "README.md").read_text()
    assert "docs/deploy.md" in readme
    import yaml

    values = yaml.safe_load((d.CHART / "values.yaml").read_text())
    for key in values:
        assert f"`{key}" in readme, f"charts/blend-scaler/README.md values table lacks {key}"


# ---- chart conventions and stable pod templates ---------------------------------


PER_REVISION_LABELS = ("helm.sh/chart", "app.kubernetes.io/version")


@pytest.mark.parametrize("name", SETS)
def test_pod_template_carries_no_per_revision_label(renders, name):
    labels = one(d.manifests_of(renders[name]), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not set(PER_REVISION_LABELS) & set(labels), labels


def _render_with_chart_version(tmp_path, version):
    import shutil

    chart = tmp_path / version.replace("+", "_") / "blend-scaler"
    shutil.copytree(d.CHART, chart)
    meta = (chart / "Chart.yaml").read_text().replace("version: 0.1.0\n", f"version: {version}\n", 1)
    (chart / "Chart.yaml").write_text(meta)
    return one(d.manifests_of(d.helm_render({}, chart)), "Deployment")


def test_a_new_git_revision_does_not_change_the_pod_template(tmp_path):
    """Flux reconcileStrategy: Revision builds the chart as <version>+<git sha>."""
    a = _render_with_chart_version(tmp_path, "0.1.0+a96eff73a282")
    b = _render_with_chart_version(tmp_path, "0.1.0+0123456789ab")
    assert a["metadata"]["labels"]["helm.sh/chart"] != b["metadata"]["labels"]["helm.sh/chart"]
    assert a["spec"]["template"] == b["spec"]["template"]


def test_chart_readme_is_generated_from_values_comments():
    import chart_readme

    assert (d.CHART / "README.md.gotmpl").is_file()
    assert (d.CHART / "README.md").read_text() == chart_readme.generate(), (
        "charts/blend-scaler/README.md is stale: run scripts/validate-deploy --update"
    )


def test_readme_generator_reads_helm_docs_comments():
    import chart_readme

    text = (
        "# -- top level\nreplicas: 2\nimage:\n  # -- the repo\n  # continued\n  repository: x\n  tag: ''\n"
        "# -- one row for the map\nresources:\n  limits: {memory: 1Gi}\nitems:\n  - name: a\n    # -- not a chart value\n    key: b\n"
    )
    docs = chart_readme.documented_keys(text)
    assert docs[("replicas",)] == "top level"
    assert docs[("image", "repository")] == "the repo continued"
    assert ("items", "key") not in docs and ("key",) not in docs
    table = chart_readme.values_table(text)
    assert "| `replicas` | int | `2` | top level |" in table
    assert "| `image.tag` | string | `\"\"` |  |" in table
    assert '| `resources` | object | `{"limits":{"memory":"1Gi"}}` | one row for the map |' in table
    assert "resources.limits" not in table


def test_license_is_apache_2_and_matches_the_labels():
    text = (d.REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (d.REPO / "Dockerfile").read_text()
    import yaml

    meta = yaml.safe_load((d.CHART / "Chart.yaml").read_text())
    assert meta["annotations"]["artifacthub.io/license"] == "Apache-2.0"


def test_chart_metadata_for_artifact_hub():
    import yaml

    meta = yaml.safe_load((d.CHART / "Chart.yaml").read_text())
    assert meta["home"].startswith("https://")
    assert meta["sources"] and all(s.startswith("https://") for s in meta["sources"])
    assert meta["icon"].endswith("/charts/blend-scaler/icon.svg") and (d.CHART / "icon.svg").is_file()
    assert meta["maintainers"]
    ann = meta["annotations"]
    links = yaml.safe_load(ann["artifacthub.io/links"])
    assert links and all({"name", "url"} <= set(x) for x in links)
    images = yaml.safe_load(ann["artifacthub.io/images"])
    assert images[0]["image"].endswith(":" + str(meta["appVersion"]))


def test_helm_lint_has_no_info_messages():
    import helm_python as helm

    report = helm.lint(str(d.CHART), {}, strict=True, namespace=d.RELEASE_NAMESPACE, kube_version=f"v{d.KUBE_VERSION}.0")
    assert [m for m in report.get("messages") or [] if m.get("severity", 0) >= 1] == []


def test_schema_takes_the_convention_keys_and_refuses_bad_ones():
    good = {
        "commonLabels": {"team": "x"},
        "strategy": {"type": "Recreate"},
        "revisionHistoryLimit": 1,
        "extraVolumes": [{"name": "v", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "v", "mountPath": "/v"}],
        "extraObjects": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}],
        "podDisruptionBudget": {"maxUnavailable": "50%"},
        "metrics": {
            "serviceMonitor": {"interval": "", "relabelings": [{"action": "drop"}], "metricRelabelings": []},
            "podMonitor": {"enabled": True, "namespace": "monitoring"},
        },
        "networkPolicy": {"keda": {"namespace": "kube-system", "namespaceSelector": {"matchLabels": {"a": "b"}}}},
    }
    assert d.schema_errors(good) == []
    for bad in (
        {"strategy": {"type": "BlueGreen"}},
        {"extraVolumeMounts": [{"name": "v"}]},
        {"commonLabels": {"team": 1}},
        {"podDisruptionBudget": {"maxUnavailable": "half"}},
        {"metrics": {"podMonitor": {"interval": "soon"}}},
        {"networkPolicy": {"keda": {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}}},
    ):
        assert d.schema_errors(bad), f"values.schema.json accepted {bad}"


@pytest.mark.parametrize(
    "pdb, match",
    [
        ({"minAvailable": 2}, "not below replicaCount"),
        ({"minAvailable": 3}, "not below replicaCount"),
        ({"minAvailable": "100%"}, "block every node drain"),
        ({"maxUnavailable": 0}, "block every node drain"),
    ],
)
def test_pdb_that_blocks_every_drain_is_refused(pdb, match):
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=match):
        d.helm_render({"replicaCount": 2, "podDisruptionBudget": {"enabled": True, **pdb}})


def test_pdb_max_unavailable_replaces_min_available(renders):
    pdb = one(d.manifests_of(renders["conventions-values"]), "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb


def test_convention_values_reach_the_objects(renders):
    docs = d.manifests_of(renders["conventions-values"])
    for doc in docs:
        if doc["kind"] != "ConfigMap":  # extraObjects are rendered as given
            assert doc["metadata"]["labels"]["team"] == "platform", d.ident(doc)
    dep = one(docs, "Deployment")
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert dep["spec"]["revisionHistoryLimit"] == 2
    assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "corp-ca", "configMap": {"name": "corp-ca-bundle"}} in pod["volumes"]
    assert {"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    cms = {c["metadata"]["name"]: c for c in by_kind(docs, "ConfigMap")}
    assert cms["corp-ca-bundle"]["metadata"]["namespace"] == d.RELEASE_NAMESPACE
    assert cms["blend-scaler-extra-note"]["data"] == {"note": "rendered through tpl"}
    ep = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert "interval" not in ep and "scrapeTimeout" not in ep
    assert ep["relabelings"][0]["targetLabel"] == "node" and ep["metricRelabelings"][0]["action"] == "drop"
    pm = one(docs, "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "prometheus"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http-metrics"
    assert pm["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_keda_namespace_is_configurable_for_the_aks_add_on(renders):
    def grpc_peer(name):
        np = one(d.manifests_of(renders[name]), "NetworkPolicy")
        return next(r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == "grpc")["from"][0]

    assert grpc_peer("aks-keda-addon-values")["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
    }
    peer = grpc_peer("conventions-values")
    assert peer["namespaceSelector"] == {"matchLabels": {"platform.example.com/keda": "true"}}
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}}
    assert 'namespaces matching {"matchLabels"' in d.notes_of(renders["conventions-values"])


def test_default_spread_counts_only_the_new_replica_set(renders):
    spread = one(d.manifests_of(renders["default"]), "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["matchLabelKeys"] == ["pod-template-hash"] for c in spread)


def test_extra_ingress_rules_are_appended(renders):
    rules = one(d.manifests_of(renders["conventions-values"]), "NetworkPolicy")["spec"]["ingress"]
    assert rules[-1] == {"ports": [{"port": 6443, "protocol": "TCP"}]}
    assert len(one(d.manifests_of(renders["default"]), "NetworkPolicy")["spec"]["ingress"]) == 2
    assert d.schema_errors({"networkPolicy": {"extraIngress": [{"to": []}]}}), "an egress-shaped rule is refused"


def test_default_allowlist_is_the_platforms_own(renders):
    env = env_of(d.manifests_of(renders["default"]))
    # Deny all but Azure Service Bus and the in-cluster Prometheus, on its port.
    assert env["BLEND_SCALER_ALLOW_UPSTREAM"]["value"] == (
        "*.servicebus.windows.net,*.servicebus.usgovcloudapi.net,"
        "*.servicebus.chinacloudapi.cn,prometheus-server.monitoring:9090"
    )
    # Only the in-cluster Prometheus may be reached on a cluster (private) address.
    assert env["BLEND_SCALER_ALLOW_PRIVATE_UPSTREAM"]["value"] == "prometheus-server.monitoring"
    assert "WARNING: scaler.allowUpstream is empty" not in d.notes_of(renders["default"])
