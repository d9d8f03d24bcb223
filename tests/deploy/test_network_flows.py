"""The platform's network flows (deploy/network-flows.yaml) against the
NetworkPolicies the platform really renders: the blend-scaler chart with its
HelmRelease values, and every NetworkPolicy in the Flux tree. Both ways: each
needed flow is admitted, each closed flow is denied."""

from __future__ import annotations

import pytest
import yaml

import deploylib as d
from netpol import Cluster, Endpoint, selector_matches

FLOWS = yaml.safe_load((d.DEPLOY / "network-flows.yaml").read_text())


def _hr_values(objects, name):
    for docs in objects.values():
        for x in docs:
            if x.get("kind") == "HelmRelease" and x["metadata"]["name"] == name:
                return x["spec"].get("values") or {}
    raise AssertionError(f"HelmRelease {name} not found")


def _pods_of(docs, default_ns=None):
    """name -> Endpoint (without IP) for every Deployment in docs."""
    out = {}
    for x in docs:
        if x.get("kind") != "Deployment":
            continue
        tmpl = x["spec"]["template"]
        ports = {}
        for c in tmpl["spec"]["containers"]:
            for p in c.get("ports") or []:
                ports[p.get("name") or str(p["containerPort"])] = p["containerPort"]
        if (tmpl["metadata"].get("annotations") or {}).get("dapr.io/enabled") == "true":
            ports.update(FLOWS["sidecar_ports"])
        out[x["metadata"]["name"]] = Endpoint(
            name=x["metadata"]["name"],
            ip="",
            namespace=x["metadata"].get("namespace") or default_ns,
            labels=dict(tmpl["metadata"].get("labels") or {}),
            ports=ports,
        )
    return out


@pytest.fixture(scope="module")
def platform(flux_objects):
    objects, errors = flux_objects
    assert errors == []
    chart_docs = d.manifests_of(d.helm_render(_hr_values(objects, "blend-scaler")))
    flux_docs = [x for docs in objects.values() for x in docs]
    pods = _pods_of(chart_docs, d.RELEASE_NAMESPACE)
    pods.update(_pods_of(flux_docs))
    for name, c in FLOWS["components"].items():
        pods[name] = Endpoint(name=name, ip="", namespace=c["namespace"], labels=c["labels"], ports=c["ports"])
    # Azure CNI: pods take addresses from the node subnet (deploy/bicep network.bicep).
    for i, ep in enumerate(pods.values()):
        ep.ip = f"10.240.{i // 200}.{i % 200 + 10}"
    for name, ip in FLOWS["external"].items():
        pods[name] = Endpoint(name=name, ip=ip)
    ns_labels = {
        x["metadata"]["name"]: x["metadata"].get("labels") or {} for x in flux_docs if x.get("kind") == "Namespace"
    }
    policies = [x for x in chart_docs + flux_docs if x.get("kind") == "NetworkPolicy"]
    return pods, Cluster(policies, ns_labels), policies, ns_labels


def _flow_id(f):
    return f"{f['from']}->{f['to']}:{f['port']}{'/' + f['protocol'] if f.get('protocol') else ''}"


def _verdict(platform, flow):
    pods, cluster, _, _ = platform
    for end in ("from", "to"):
        assert flow[end] in pods, f"network-flows.yaml names {flow[end]!r}, which no manifest or component defines"
    return cluster.verdict(pods[flow["from"]], pods[flow["to"]], int(flow["port"]), flow.get("protocol", "TCP"))


@pytest.mark.parametrize("flow", FLOWS["allow"], ids=_flow_id)
def test_needed_flow_is_admitted(platform, flow):
    ok, why = _verdict(platform, flow)
    assert ok, f"{_flow_id(flow)} ({flow['why']}) is blocked: {why}"


@pytest.mark.parametrize("flow", FLOWS["deny"], ids=_flow_id)
def test_closed_flow_is_denied(platform, flow):
    ok, why = _verdict(platform, flow)
    assert not ok, f"{_flow_id(flow)} must stay closed ({flow['why']}) but is {why}"


def test_every_platform_workload_is_in_the_flow_list(platform):
    """A new Deployment without a flow would be checked by nothing."""
    pods, _, _, _ = platform
    named = {f[end] for f in FLOWS["allow"] + FLOWS["deny"] for end in ("from", "to")}
    assert set(pods) - named == set()


def test_the_flow_list_names_real_ports(platform):
    """Each flow's port is one the destination pod listens on (typos fail)."""
    pods, _, _, _ = platform
    for f in FLOWS["allow"]:
        dst = pods[f["to"]]
        if dst.is_pod and f["to"] != "kube-dns":
            assert int(f["port"]) in dst.ports.values(), f"{_flow_id(f)}: {dst.name} has no port {f['port']}"


def test_the_keda_ingress_policy_without_port_9666_is_caught(platform):
    """With the keda-ingress policy as it was, the metrics-apiserver cannot reach the operator."""
    pods, _, policies, ns_labels = platform
    old = d.load_file(d.REPO / "tests" / "deploy" / "broken" / "keda-ingress-without-9666.yaml")[0]
    replaced = [p for p in policies if p["metadata"]["name"] != "keda-ingress"] + [old]
    ok, why = Cluster(replaced, ns_labels).verdict(pods["keda-metrics-apiserver"], pods["keda-operator"], 9666)
    assert not ok and "keda-ingress" in why


def test_an_allow_all_policy_opens_a_closed_flow(platform):
    pods, _, policies, ns_labels = platform
    allow_all = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all", "namespace": d.RELEASE_NAMESPACE},
        "spec": {"podSelector": {}, "ingress": [{}]},
    }
    ok, _ = Cluster(policies + [allow_all], ns_labels).verdict(pods["tenant-pod"], pods["blend-scaler"], 9090)
    assert ok


# ---- the evaluator's own semantics ---------------------------------------------


def _pod(name, ns, labels=None, ports=None, ip="10.0.0.1"):
    return Endpoint(name=name, ip=ip, namespace=ns, labels=labels or {}, ports=ports or {})


def test_evaluator_named_ports_and_peer_and_or():
    np = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "a"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "srv"}},
            "ingress": [
                {
                    # one peer: namespace b AND label role=client
                    "from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": "grpc"}],
                }
            ],
        },
    }
    c = Cluster([np], {"b": {"team": "b"}})
    srv = _pod("srv", "a", {"app": "srv"}, {"grpc": 9090})
    assert c.verdict(_pod("c", "b", {"role": "client"}), srv, 9090)[0]
    assert not c.verdict(_pod("c", "b", {"role": "other"}), srv, 9090)[0]
    assert not c.verdict(_pod("c", "a", {"role": "client"}), srv, 9090)[0]
    assert not c.verdict(_pod("c", "b", {"role": "client"}), srv, 9091)[0]
    # A pod the policy does not select is not isolated.
    assert c.verdict(_pod("c", "z"), _pod("other", "a", {"app": "x"}), 1)[0]


def test_evaluator_egress_ipblock_except_and_default_policy_types():
    np = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "e", "namespace": "a"},
        # no policyTypes: egress rules make it an Egress policy too
        "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443, "endPort": 444}]}]},
    }
    c = Cluster([np], {})
    src = _pod("s", "a")
    assert c.verdict(src, Endpoint("out", "52.1.1.1"), 443)[0]
    assert c.verdict(src, Endpoint("out", "52.1.1.1"), 444)[0]
    assert not c.verdict(src, Endpoint("out", "52.1.1.1"), 80)[0]
    assert not c.verdict(src, Endpoint("in", "10.1.1.1"), 443)[0]
    # Ingress is isolated too (default policyTypes include Ingress), with no rule.
    assert not c.verdict(_pod("x", "b"), src, 8080)[0]


def test_evaluator_match_expressions():
    sel = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}, {"key": "legacy", "operator": "DoesNotExist"}]}
    assert selector_matches(sel, {"tier": "web"})
    assert not selector_matches(sel, {"tier": "web", "legacy": "1"})
    assert not selector_matches(sel, {"tier": "db"})
