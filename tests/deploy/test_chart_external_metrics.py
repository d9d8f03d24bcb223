"""The chart's metrics adapter (externalMetrics.*): what it
renders, what it refuses, and the Helm `lookup` against a local Kubernetes API
test server standing in for a cluster that already has an APIService."""

from __future__ import annotations

import base64
import socket
import ssl
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

import certmanager
import deploylib as d
from fakekube import APISERVICE, NS, FakeKube
from netpol import Cluster, Endpoint

ADAPTER = "blend-scaler-adapter"
ON = {"externalMetrics": {"enabled": True}}
REGISTERED = {"externalMetrics": {"enabled": True, "registerAPIService": True}}
CERT_MANAGER = {
    "externalMetrics": {
        "enabled": True,
        "registerAPIService": True,
        "certManager": {"enabled": True, "issuerRef": {"name": "platform-ca", "kind": "ClusterIssuer"}},
    }
}
ADAPTER_KINDS = {"APIService", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "RoleBinding", "Certificate", "Secret"}


def render(values):
    return d.manifests_of(d.helm_render(values))


def by_kind(docs, kind):
    return [x for x in docs if x.get("kind") == kind]


def one(docs, kind, name=None):
    found = [x for x in by_kind(docs, kind) if name is None or x["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs):
    return pod_spec(docs)["containers"][0]


def env_of(docs):
    return {e["name"]: e.get("value") for e in container(docs).get("env", [])}


def helm_error():
    import helm_python as helm

    return helm.HelmError


# ---- off by default ------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in d.values_sets() if n != "external-metrics-values"])
def test_the_adapter_is_off_by_default_and_renders_nothing_of_it(renders, name):
    docs = d.manifests_of(renders[name])
    assert {x["kind"] for x in docs} & ADAPTER_KINDS == set(), "only ci sets that enable the adapter render its kinds"
    assert [x for x in by_kind(docs, "Service") if x["metadata"]["name"] == ADAPTER] == []
    assert "ext-metrics" not in {p["name"] for p in container(docs)["ports"]}
    assert not [k for k in env_of(docs) if k.startswith("BLEND_SCALER_EXTERNAL_METRICS")]
    assert pod_spec(docs)["automountServiceAccountToken"] is False
    assert "External Metrics API" not in d.notes_of(renders[name])


def test_register_apiservice_is_off_by_default_even_with_the_adapter_on():
    values = yaml.safe_load((d.CHART / "values.yaml").read_text())["externalMetrics"]
    assert values["enabled"] is False and values["registerAPIService"] is False
    docs = render(ON)
    assert by_kind(docs, "APIService") == []
    assert one(docs, "Service", ADAPTER)
    assert "Not registered" in d.notes_of(d.helm_render(ON))


# ---- on: listener, Service, RBAC, CRD ------------------------------------------


def test_the_adapter_listens_on_6443_with_the_binarys_flags_as_env():
    docs = render(ON)
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports["ext-metrics"] == 6443
    env = env_of(docs)
    assert env["BLEND_SCALER_EXTERNAL_METRICS_ADDR"] == "0.0.0.0:6443"
    assert env["BLEND_SCALER_EXTERNAL_METRICS_SERVICE"] == f"{NS}/{ADAPTER}"
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert env["BLEND_SCALER_EXTERNAL_METRICS_TLS_CERT"] == mounts["external-metrics-tls"] + "/tls.crt"
    assert env["BLEND_SCALER_EXTERNAL_METRICS_TLS_KEY"] == mounts["external-metrics-tls"] + "/tls.key"
    vols = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert vols["external-metrics-tls"]["secret"]["secretName"] == f"{ADAPTER}-tls"
    # The adapter talks to the API server with the pod's ServiceAccount token.
    assert pod_spec(docs)["automountServiceAccountToken"] is True
    # Two replicas and the PDB by default: a down adapter breaks every discovery.
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_another_port_moves_the_listener_and_the_service_follows_by_name():
    docs = render({"externalMetrics": {"enabled": True, "port": 8443}})
    assert {p["name"]: p["containerPort"] for p in container(docs)["ports"]}["ext-metrics"] == 8443
    assert env_of(docs)["BLEND_SCALER_EXTERNAL_METRICS_ADDR"] == "0.0.0.0:8443"
    assert one(docs, "Service", ADAPTER)["spec"]["ports"][0]["targetPort"] == "ext-metrics"


def test_the_adapter_service_is_a_cluster_ip_on_443_to_the_pods():
    docs = render(ON)
    svc = one(docs, "Service", ADAPTER)
    assert svc["spec"]["type"] == "ClusterIP" and "clusterIP" not in svc["spec"], "the aggregator needs a cluster IP"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(443, "ext-metrics")]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    # The scaler's own Service stays headless and unchanged.
    assert one(docs, "Service", "blend-scaler")["spec"]["clusterIP"] == "None"


def test_rbac_grants_the_adapter_its_objects_and_the_two_delegation_bindings():
    docs = render(ON)
    sa = {"kind": "ServiceAccount", "name": one(docs, "ServiceAccount")["metadata"]["name"], "namespace": NS}
    role = one(docs, "ClusterRole", ADAPTER)
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert grants == {
        ("blend-scaler.io", "blendedmetrics", "get"),
        ("blend-scaler.io", "blendedmetrics", "list"),
        ("blend-scaler.io", "blendedmetrics", "watch"),
        ("blend-scaler.io", "blendedmetrics/status", "patch"),
        ("apiregistration.k8s.io", "apiservices", "get"),
    }
    assert next(r for r in role["rules"] if r["resources"] == ["apiservices"])["resourceNames"] == [APISERVICE]
    assert not any("secrets" in rule["resources"] for rule in role["rules"])
    bindings = {b["roleRef"]["name"]: b for b in by_kind(docs, "ClusterRoleBinding")}
    assert set(bindings) == {ADAPTER, "system:auth-delegator"}
    assert all(b["subjects"] == [sa] and b["roleRef"]["kind"] == "ClusterRole" for b in bindings.values())
    reader = one(docs, "RoleBinding")
    assert reader["metadata"]["namespace"] == "kube-system"
    assert reader["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "extension-apiserver-authentication-reader",
    }
    assert reader["subjects"] == [sa]


def test_rbac_follows_a_named_service_account():
    docs = render({**ON, "serviceAccount": {"create": False, "name": "platform-scaler"}})
    for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert b["subjects"][0]["name"] == "platform-scaler"
    assert pod_spec(docs)["serviceAccountName"] == "platform-scaler"


def test_the_crd_is_the_generated_file_kept_on_uninstall():
    docs = render(ON)
    crd = one(docs, "CustomResourceDefinition")
    shipped = d.load_file(d.CHART / "files" / "blendedmetric-crd.yaml")[0]
    assert crd["spec"] == shipped["spec"]
    assert crd["metadata"]["name"] == shipped["metadata"]["name"] == "blendedmetrics.blend-scaler.io"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert by_kind(render({"externalMetrics": {"enabled": True, "installCRD": False}}), "CustomResourceDefinition") == []


@pytest.mark.parametrize(
    "values",
    [ON, REGISTERED, CERT_MANAGER, {"externalMetrics": {**REGISTERED["externalMetrics"], "networkPolicy": {"from": [{"ipBlock": {"cidr": "20.50.10.0/24"}}]}}}],
    ids=["on", "registered", "cert-manager", "narrowed"],
)
def test_every_adapter_render_passes_kubernetes_validate_and_lint(crd_table, values):
    docs = render(values)
    assert d.validate_docs(docs) == []
    assert d.helm_lint(values) == []


# ---- the APIService and its certificate ----------------------------------------


def test_the_apiservice_names_its_group_and_points_at_the_adapter_service():
    docs = render(REGISTERED)
    api = one(docs, "APIService")
    spec = api["spec"]
    # Validation forces the name to be version.group.
    assert api["metadata"]["name"] == f"{spec['version']}.{spec['group']}" == APISERVICE
    assert (spec["group"], spec["version"]) == ("external.metrics.k8s.io", "v1beta1")
    assert 1 <= spec["groupPriorityMinimum"] <= 20000 and 1 <= spec["versionPriority"] <= 1000
    assert (spec["groupPriorityMinimum"], spec["versionPriority"]) == (100, 100)
    svc = one(docs, "Service", ADAPTER)
    assert spec["service"] == {"name": svc["metadata"]["name"], "namespace": svc["metadata"]["namespace"], "port": 443}
    assert spec["service"]["port"] in {p["port"] for p in svc["spec"]["ports"]}
    assert "insecureSkipTLSVerify" not in spec, "never ship an unverified APIService"


def _pem(b64: str) -> str:
    return base64.b64decode(b64).decode()


def _handshake(cert_pem: str, key_pem: str, ca_pem: str, server_name: str) -> None:
    """A real TLS handshake: a server with the chart's certificate, a client that
    trusts only the caBundle and checks the name the aggregator dials."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_text(cert_pem)
        key.write_text(key_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cadata=ca_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors = []

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"x")
    finally:
        t.join(10)
        listener.close()


def test_the_generated_certificate_is_signed_by_the_ca_in_the_cabundle_for_the_service_names():
    docs = render(REGISTERED)
    secret = one(docs, "Secret", f"{ADAPTER}-tls")
    assert secret["type"] == "kubernetes.io/tls"
    api = one(docs, "APIService")
    assert api["spec"]["caBundle"] == secret["data"]["ca.crt"]
    ca, cert, key = (_pem(secret["data"][k]) for k in ("ca.crt", "tls.crt", "tls.key"))
    assert "BEGIN CERTIFICATE" in ca and "PRIVATE KEY" in key
    for name in (f"{ADAPTER}.{NS}.svc", f"{ADAPTER}.{NS}.svc.cluster.local"):
        _handshake(cert, key, ca, name)
    # Negative controls: another name, and a CA the caBundle does not hold.
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        _handshake(cert, key, ca, f"blend-scaler.{NS}.svc")
    other_ca = _pem(one(render(REGISTERED), "Secret", f"{ADAPTER}-tls")["data"]["ca.crt"])
    assert other_ca != ca, "genCA makes a fresh CA per render without an existing Secret"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, key, other_ca, f"{ADAPTER}.{NS}.svc")


def test_cert_manager_issues_the_certificate_and_injects_the_ca():
    docs = render(CERT_MANAGER)
    assert by_kind(docs, "Secret") == [], "cert-manager writes the Secret, not the chart"
    cert = one(docs, "Certificate")
    assert certmanager.validate_certificate(cert) == []
    spec = cert["spec"]
    vols = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert spec["secretName"] == vols["external-metrics-tls"]["secret"]["secretName"]
    assert spec["dnsNames"] == [f"{ADAPTER}.{NS}.svc", f"{ADAPTER}.{NS}.svc.cluster.local"]
    assert spec["issuerRef"] == {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert "server auth" in spec["usages"]
    api = one(docs, "APIService")
    assert api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NS}/{cert['metadata']['name']}"
    assert "caBundle" not in api["spec"] and "insecureSkipTLSVerify" not in api["spec"]


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda s: s.pop("secretName"), "spec.secretName: required"),
        (lambda s: s["issuerRef"].pop("name"), "spec.issuerRef.name: required"),
        (lambda s: s["issuerRef"].update(kind="Issuers"), "is not Issuer or ClusterIssuer"),
        (lambda s: s.update(usages=["server auth", "serverAuth"]), "'serverAuth' is not a cert-manager key usage"),
        (lambda s: s["usages"].append("key encipherment"), "key encipherment is an RSA usage"),
        (lambda s: s["privateKey"].update(size=2048), "size: 2048 is not valid for ECDSA"),
        (lambda s: s.update(duration="90d"), "not a Go duration"),
        (lambda s: s.update(renewBefore="3000h"), "must be shorter than spec.duration"),
        (lambda s: s.update(dnsName="x"), "spec.dnsName: unknown field"),
    ],
    ids=["no-secret", "no-issuer", "issuer-kind", "usage", "ecdsa-encipherment", "key-size", "duration", "renew", "typo"],
)
def test_the_hand_written_certificate_check_catches_broken_shapes(change, error):
    cert = one(render(CERT_MANAGER), "Certificate")
    change(cert["spec"])
    assert any(error in e for e in d.validate_docs([cert])), d.validate_docs([cert])


# ---- refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, match",
    [
        ({"externalMetrics": {"registerAPIService": True}}, "registerAPIService needs externalMetrics.enabled"),
        ({"externalMetrics": {"certManager": {"enabled": True, "issuerRef": {"name": "x"}}}}, "certManager.enabled needs externalMetrics.enabled"),
        ({"externalMetrics": {"enabled": True, "certManager": {"enabled": True}}}, "needs externalMetrics.certManager.issuerRef.name"),
        ({"externalMetrics": {"enabled": True, "port": 9090}}, "externalMetrics.port=9090 is already"),
        ({"externalMetrics": {"enabled": True, "port": 9464}}, "externalMetrics.port=9464 is already"),
        ({"externalMetrics": {"networkPolicy": {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}}}, "networkPolicy.from is set but"),
    ],
    ids=["register-without-enabled", "cert-manager-without-enabled", "no-issuer", "grpc-port", "http-port", "from-without-enabled"],
)
def test_impossible_combinations_are_refused_with_the_field_named(values, match):
    with pytest.raises(helm_error(), match=match):
        d.helm_render(values)


def test_the_schema_refuses_bad_adapter_values():
    assert d.schema_errors(CERT_MANAGER) == []
    for bad in (
        {"externalMetrics": {"enabled": "yes"}},
        {"externalMetrics": {"port": 80}},
        {"externalMetrics": {"apiService": {"groupPriorityMinimum": 0}}},
        {"externalMetrics": {"apiService": {"versionPriority": 1001}}},
        {"externalMetrics": {"certManager": {"duration": "90 days"}}},
        {"externalMetrics": {"insecureSkipTLSVerify": True}},
        {"externalMetrics": {"networkPolicy": {"from": [{"ipBlock": {"cidr": "everywhere"}}]}}},
        {"externalMetrics": {"networkPolicy": {"from": [{}]}}},
    ):
        assert d.schema_errors(bad), f"values.schema.json accepted {bad}"


# ---- Helm lookup against a local Kubernetes API test server --------------------


@pytest.fixture
def kube():
    fake = FakeKube()
    yield fake
    fake.close()


KEDA = {"name": "keda-operator-metrics-apiserver", "namespace": "keda", "port": 443}


def test_the_install_refuses_when_kedas_apiservice_owns_the_group(kube):
    kube.put_apiservice(KEDA)
    with pytest.raises(helm_error()) as err:
        kube.render(REGISTERED)
    message = str(err.value)
    assert f"the APIService {APISERVICE} already exists and points at the Service keda/keda-operator-metrics-apiserver" in message
    assert f"not at {NS}/{ADAPTER}" in message
    assert "registerAPIService=false" in message
    assert f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}" in kube.requests


def test_the_install_refuses_an_apiservice_of_that_name_without_a_service(kube):
    kube.put_apiservice(None)
    with pytest.raises(helm_error(), match="points at no Service"):
        kube.render(REGISTERED)


def test_the_install_refuses_a_same_named_service_in_another_namespace(kube):
    kube.put_apiservice({"name": ADAPTER, "namespace": "other", "port": 443})
    with pytest.raises(helm_error(), match=f"the Service other/{ADAPTER}"):
        kube.render(REGISTERED)


def test_the_install_goes_ahead_when_the_apiservice_is_absent(kube):
    docs = kube.render(REGISTERED)
    assert one(docs, "APIService")["spec"]["service"]["name"] == ADAPTER
    assert f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}" in kube.requests


def test_an_upgrade_goes_ahead_when_the_apiservice_is_already_ours(kube):
    kube.put_apiservice({"name": ADAPTER, "namespace": NS, "port": 443})
    assert one(kube.render(REGISTERED), "APIService")["spec"]["service"]["namespace"] == NS
    assert one(kube.render(CERT_MANAGER), "APIService")


def test_unregistered_the_adapter_installs_beside_keda(kube):
    """registerAPIService=false never reads, and so never minds, KEDA's APIService."""
    kube.put_apiservice(KEDA)
    docs = kube.render(ON)
    assert by_kind(docs, "APIService") == []
    assert not any("apiservices" in p for p in kube.requests)


def test_an_upgrade_reuses_the_generated_certificate_already_in_the_cluster(kube):
    first = one(render(REGISTERED), "Secret", f"{ADAPTER}-tls")["data"]
    kube.put_secret(f"{ADAPTER}-tls", first)
    docs = kube.render(REGISTERED)
    assert one(docs, "Secret", f"{ADAPTER}-tls")["data"] == first
    assert one(docs, "APIService")["spec"]["caBundle"] == first["ca.crt"]


def test_a_partial_secret_is_replaced_by_a_fresh_certificate(kube):
    kube.put_secret(f"{ADAPTER}-tls", {"tls.crt": base64.b64encode(b"x").decode()})
    data = one(kube.render(REGISTERED), "Secret", f"{ADAPTER}-tls")["data"]
    assert set(data) == {"ca.crt", "tls.crt", "tls.key"}
    assert "BEGIN CERTIFICATE" in _pem(data["tls.crt"])


# ---- NetworkPolicy -------------------------------------------------------------


def _adapter_pod(docs):
    tmpl = one(docs, "Deployment")["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in tmpl["spec"]["containers"][0]["ports"]}
    return Endpoint(name="blend-scaler", ip="10.240.0.10", namespace=NS, labels=tmpl["metadata"]["labels"], ports=ports)


API_SERVER = Endpoint(name="kube-apiserver", ip="20.50.10.10")  # outside the pod network
KONNECTIVITY = Endpoint(name="konnectivity-agent", ip="10.240.0.20", namespace="kube-system", labels={"app": "konnectivity-agent"})
TENANT = Endpoint(name="tenant-pod", ip="10.240.0.30", namespace="tenant-a", labels={"app": "x"})


def test_the_network_policy_admits_the_api_server_to_6443_and_nothing_more():
    docs = render(REGISTERED)
    cluster = Cluster(by_kind(docs, "NetworkPolicy"), {})
    pod = _adapter_pod(docs)
    for src in (API_SERVER, KONNECTIVITY):
        ok, why = cluster.verdict(src, pod, 6443)
        assert ok, f"{src.name} -> 6443: {why}"
        assert not cluster.verdict(src, pod, 9090)[0], "the API server gets no gRPC"
        assert not cluster.verdict(src, pod, 9464)[0]
    # Off, the port is closed like every other.
    off = render({})
    assert not Cluster(by_kind(off, "NetworkPolicy"), {}).verdict(API_SERVER, _adapter_pod(off), 6443)[0]


def test_network_policy_from_narrows_6443_to_the_api_server_addresses():
    values = {"externalMetrics": {**REGISTERED["externalMetrics"], "networkPolicy": {"from": [{"ipBlock": {"cidr": "20.50.10.0/24"}}]}}}
    docs = render(values)
    cluster = Cluster(by_kind(docs, "NetworkPolicy"), {})
    pod = _adapter_pod(docs)
    assert cluster.verdict(API_SERVER, pod, 6443)[0]
    assert not cluster.verdict(TENANT, pod, 6443)[0]
    # By default every source reaches the port: the TLS layer is the guard.
    assert Cluster(by_kind(render(REGISTERED), "NetworkPolicy"), {}).verdict(TENANT, pod, 6443)[0]


def test_the_notes_warn_of_a_single_adapter_pod_and_of_an_egress_that_misses_the_api_server():
    notes = d.notes_of(d.helm_render(REGISTERED))
    assert "Registered as the APIService v1beta1.external.metrics.k8s.io" in notes
    assert "WARNING: replicaCount" not in notes and "httpsCidrs must include" not in notes
    single = d.notes_of(d.helm_render({**REGISTERED, "replicaCount": 1}))
    assert "WARNING: replicaCount is 1" in single
    narrowed = {**REGISTERED, "networkPolicy": {"egress": {"httpsCidrs": ["40.64.0.0/16"]}}}
    assert "httpsCidrs must include the Kubernetes API server's address" in d.notes_of(d.helm_render(narrowed))
