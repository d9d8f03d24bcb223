"""A small Kubernetes NetworkPolicy evaluator, for checking the platform's flows
offline (no cluster, no CNI here).

It follows the networking.k8s.io/v1 semantics Calico enforces:
- a pod is isolated for ingress (egress) once any policy in its namespace selects
  it with that policy type; then a connection needs one rule of one of those
  policies that admits it, and a connection needs both the source's egress and
  the destination's ingress side to admit it;
- `policyTypes` defaults to Ingress, plus Egress when the policy has egress rules;
- a peer with podSelector and namespaceSelector matches pods satisfying both,
  separate peers are alternatives; a podSelector alone means the policy's namespace;
- an empty or absent `from`/`to` admits every peer, empty or absent `ports`
  every port; a named port resolves against the destination pod's container ports;
- ipBlock matches by address (cidr minus except). On AKS with Azure CNI, pods get
  addresses from the node subnet, and Calico matches them against ipBlock too.
- Sources outside the pod network (the AKS API server, the internet, Azure
  endpoints) match only ipBlock peers or rules without `from`/`to`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass
class Endpoint:
    name: str
    ip: str
    namespace: str | None = None  # None: outside the cluster's pod network
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """LabelSelector semantics; an empty selector matches everything."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _ip_in_block(ip: str, block: dict) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr not in ipaddress.ip_network(block["cidr"], strict=False):
        return False
    return not any(addr in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])


class Cluster:
    def __init__(self, policies: list[dict], namespace_labels: dict[str, dict[str, str]]):
        self.policies = [p for p in policies if p.get("kind") == "NetworkPolicy"]
        self.namespace_labels = namespace_labels

    def _ns_labels(self, ns: str) -> dict[str, str]:
        # The API server sets kubernetes.io/metadata.name on every namespace.
        return {**self.namespace_labels.get(ns, {}), "kubernetes.io/metadata.name": ns}

    @staticmethod
    def _types(policy: dict) -> set[str]:
        spec = policy.get("spec") or {}
        if spec.get("policyTypes"):
            return set(spec["policyTypes"])
        return {"Ingress", "Egress"} if "egress" in spec else {"Ingress"}

    def _selecting(self, pod: Endpoint, direction: str) -> list[dict]:
        return [
            p
            for p in self.policies
            if p["metadata"].get("namespace") == pod.namespace
            and direction in self._types(p)
            and selector_matches((p.get("spec") or {}).get("podSelector"), pod.labels)
        ]

    def _peer_matches(self, peer: dict, policy_ns: str, other: Endpoint) -> bool:
        if "ipBlock" in peer:
            return _ip_in_block(other.ip, peer["ipBlock"])
        if not other.is_pod:
            return False
        if "namespaceSelector" in peer:
            if not selector_matches(peer["namespaceSelector"], self._ns_labels(other.namespace)):
                return False
        elif other.namespace != policy_ns:
            return False
        return selector_matches(peer.get("podSelector"), other.labels) if "podSelector" in peer else True

    @staticmethod
    def _port_matches(rule_ports: list | None, dst: Endpoint, port: int, protocol: str) -> bool:
        if not rule_ports:
            return True
        for rp in rule_ports:
            if (rp.get("protocol") or "TCP") != protocol:
                continue
            want = rp.get("port")
            if want is None:
                return True
            if isinstance(want, str) and not want.isdigit():
                number = dst.ports.get(want)
                if number is not None and number == port:
                    return True
                continue
            lo = int(want)
            hi = int(rp.get("endPort") or lo)
            if lo <= port <= hi:
                return True
        return False

    def _side(self, pod: Endpoint, other: Endpoint, dst: Endpoint, port: int, protocol: str, direction: str):
        """(allowed, name of a policy that isolates it or admits it)."""
        policies = self._selecting(pod, direction)
        if not policies:
            return True, None
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for p in policies:
            for rule in (p.get("spec") or {}).get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self._peer_matches(x, p["metadata"]["namespace"], other) for x in peers):
                    continue
                if self._port_matches(rule.get("ports"), dst, port, protocol):
                    return True, p["metadata"]["name"]
        return False, ", ".join(sorted(p["metadata"]["name"] for p in policies))

    def verdict(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> tuple[bool, str]:
        """Whether src may open a connection to dst:port, and why (policy names)."""
        if src.is_pod:
            ok, why = self._side(src, dst, dst, port, protocol, "Egress")
            if not ok:
                return False, f"egress of {src.name} denied by {why}"
        if dst.is_pod:
            ok, why = self._side(dst, src, dst, port, protocol, "Ingress")
            if not ok:
                return False, f"ingress of {dst.name} denied by {why}"
            return True, f"admitted by {why or 'no isolating policy'}"
        return True, "destination outside the cluster"
