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
def test_pod_hardening(renders, name):
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
    assert pod["automountServiceAccountToken"] is False
    assert c["args"] == ["serve"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 9090, "http-metrics": 9464}
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
