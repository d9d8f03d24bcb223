"""cert-manager's Certificate, checked without its CRD.

The shared CRD set has no cert-manager CRDs, so the fields the chart may
render are written out here by hand from cert-manager's documented API
(cert-manager.io/docs/reference/api-docs/#cert-manager.io/v1.Certificate, and
the CRD cert-manager ships, deploy/crds/cert-manager.io_certificates.yaml):
the required `secretName` and `issuerRef.name`, and the enums of `usages` and
`privateKey`. Anything else in `spec` is refused, like an unknown field under
the API server's strict field validation.
"""

from __future__ import annotations

import re

CERTIFICATE = ("cert-manager.io", "v1", "Certificate")

# KeyUsage values cert-manager accepts.
USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}
KEY_SIZES = {"RSA": {2048, 4096, 8192}, "ECDSA": {256, 384, 521}, "Ed25519": None}
_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
_DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SPEC_KEYS = {
    "secretName", "issuerRef", "dnsNames", "ipAddresses", "uris", "emailAddresses", "commonName",
    "duration", "renewBefore", "privateKey", "usages", "isCA", "secretTemplate", "subject",
    "revisionHistoryLimit", "encodeUsagesInRequest",
}


def _duration_hours(text: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(ns|us|µs|ms|s|m|h)", text)) / 3600


def validate_certificate(doc: dict) -> list[str]:
    errors: list[str] = []
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return ["spec: required object"]
    for key in sorted(set(spec) - _SPEC_KEYS):
        errors.append(f"spec.{key}: unknown field")
    if not isinstance(spec.get("secretName"), str) or not spec["secretName"]:
        errors.append("spec.secretName: required")
    ref = spec.get("issuerRef")
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
        errors.append("spec.issuerRef.name: required")
    else:
        for key in sorted(set(ref) - {"name", "kind", "group"}):
            errors.append(f"spec.issuerRef.{key}: unknown field")
        if ref.get("group", "cert-manager.io") == "cert-manager.io" and ref.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
            errors.append(f"spec.issuerRef.kind: {ref.get('kind')!r} is not Issuer or ClusterIssuer")
    names = spec.get("dnsNames") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and _DNS_NAME.match(n) for n in names):
        errors.append(f"spec.dnsNames: {names!r} is not a list of DNS names")
    if not (names or spec.get("ipAddresses") or spec.get("uris") or spec.get("commonName") or spec.get("emailAddresses")):
        errors.append("spec: at least one of commonName, dnsNames, uris, emailAddresses or ipAddresses is required")
    for key, minimum in (("duration", 1.0), ("renewBefore", 5 / 60)):
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not _GO_DURATION.match(value):
            errors.append(f"spec.{key}: {value!r} is not a Go duration")
        elif _duration_hours(value) < minimum:
            errors.append(f"spec.{key}: {value} is below cert-manager's minimum")
    if isinstance(spec.get("duration"), str) and isinstance(spec.get("renewBefore"), str):
        if _GO_DURATION.match(spec["duration"]) and _GO_DURATION.match(spec["renewBefore"]):
            if _duration_hours(spec["renewBefore"]) >= _duration_hours(spec["duration"]):
                errors.append("spec.renewBefore: must be shorter than spec.duration")
    usages = spec.get("usages")
    if usages is not None:
        if not isinstance(usages, list):
            errors.append("spec.usages: must be a list")
        else:
            errors += [f"spec.usages: {u!r} is not a cert-manager key usage" for u in usages if u not in USAGES]
    key = spec.get("privateKey")
    if key is not None:
        if not isinstance(key, dict):
            errors.append("spec.privateKey: must be an object")
        else:
            for k in sorted(set(key) - {"algorithm", "size", "encoding", "rotationPolicy"}):
                errors.append(f"spec.privateKey.{k}: unknown field")
            algorithm = key.get("algorithm", "RSA")
            if algorithm not in KEY_SIZES:
                errors.append(f"spec.privateKey.algorithm: {algorithm!r} is not RSA, ECDSA or Ed25519")
            elif "size" in key and KEY_SIZES[algorithm] is not None and key["size"] not in KEY_SIZES[algorithm]:
                errors.append(f"spec.privateKey.size: {key['size']!r} is not valid for {algorithm}")
            if key.get("encoding", "PKCS1") not in ("PKCS1", "PKCS8"):
                errors.append(f"spec.privateKey.encoding: {key['encoding']!r} is not PKCS1 or PKCS8")
            if key.get("rotationPolicy", "Always") not in ("Never", "Always"):
                errors.append(f"spec.privateKey.rotationPolicy: {key['rotationPolicy']!r} is not Never or Always")
            if algorithm == "ECDSA" and isinstance(usages, list) and "key encipherment" in usages:
                errors.append("spec.usages: key encipherment is an RSA usage, not for an ECDSA key")
    return errors
