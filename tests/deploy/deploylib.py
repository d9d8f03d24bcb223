"""Offline validation of blend-scaler's chart and deploy manifests.

Each check is a function that returns a list of error strings (empty: valid),
so the tests can assert both that the real manifests pass and that broken ones
fail. Nothing here talks to a cluster or the network.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

import certmanager

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "blend-scaler"
CHART_CI = CHART / "ci"
RENDERED = CHART / "rendered"
DEPLOY = REPO / "deploy"
FLUX = DEPLOY / "flux"
BICEP = DEPLOY / "bicep"
FLUX_CLUSTER = FLUX / "clusters" / "production"

# The Kubernetes minor the manifests target (deploy/bicep kubernetesVersion).
KUBE_VERSION = "1.33"
RELEASE_NAME = "blend-scaler"
RELEASE_NAMESPACE = "blend-scaler"

# CRD files the custom kinds are validated against (from the shared reference set).
EXPECTED_CRD_FILES = [
    "keda.sh_scaledobjects.yaml",
    "keda.sh_triggerauthentications.yaml",
    "dapr.io_components.yaml",
    "helm.toolkit.fluxcd.io_helmreleases.yaml",
    "kustomize.toolkit.fluxcd.io_kustomizations.yaml",
    "source.toolkit.fluxcd.io_gitrepositories.yaml",
    "source.toolkit.fluxcd.io_helmrepositories.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "secrets-store.csi.x-k8s.io_secretproviderclasses.yaml",
]


class SetupError(RuntimeError):
    """Something the validation needs is missing (not a manifest error)."""


# --------------------------------------------------------------------------
# YAML helpers


def load_docs(text: str) -> list[dict]:
    """All non-empty documents of a multi-document YAML string."""
    return [d for d in yaml.safe_load_all(text) if d]


def load_file(path: Path) -> list[dict]:
    return load_docs(path.read_text())


def dump_docs(docs: Iterable[dict]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def ident(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc.get('kind', '?')} {ns + '/' if ns else ''}{name}"


# --------------------------------------------------------------------------
# Shared reference data (CRDs): read from ../shared or $BLEND_SCALER_SHARED.


def shared_dir() -> Path:
    env = os.environ.get("BLEND_SCALER_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def crd_dir() -> Path:
    base = shared_dir()
    crds = base / "crds"
    missing = [f for f in EXPECTED_CRD_FILES if not (crds / f).is_file()]
    if not crds.is_dir() or missing:
        what = "the directory itself" if not crds.is_dir() else ", ".join(missing)
        raise SetupError(
            f"CRD reference files not found: missing {what} in {crds}. "
            "Custom kinds are validated against the openAPIV3Schema of the CRDs in "
            "<shared>/crds/, where <shared> is $BLEND_SCALER_SHARED or ../shared next to "
            f"the repository root ({REPO.parent / 'shared'}). Point BLEND_SCALER_SHARED at "
            "the shared folder that holds crds/ (they are never copied into this repo)."
        )
    return crds


@dataclass
class CrdVersion:
    group: str
    version: str
    kind: str
    scope: str
    schema: dict
    deprecated: bool
    source: str


@functools.lru_cache(maxsize=4)
def _load_crds(path: str) -> dict[tuple[str, str, str], CrdVersion]:
    out: dict[tuple[str, str, str], CrdVersion] = {}
    for f in sorted(Path(path).glob("*.yaml")):
        for crd in load_file(f):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for v in spec["versions"]:
                if not v.get("served", False):
                    continue
                key = (spec["group"], v["name"], spec["names"]["kind"])
                out[key] = CrdVersion(
                    group=spec["group"],
                    version=v["name"],
                    kind=spec["names"]["kind"],
                    scope=spec.get("scope", "Namespaced"),
                    schema=v["schema"]["openAPIV3Schema"],
                    deprecated=bool(v.get("deprecated", False)),
                    source=f.name,
                )
    return out


def crds() -> dict[tuple[str, str, str], CrdVersion]:
    return _load_crds(str(crd_dir()))


def split_api_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


# --------------------------------------------------------------------------
# Structural schema -> JSON Schema, as the API server applies it with
# field validation "Strict" (kubectl's default): unknown fields are errors.


def _to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: _to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _to_jsonschema(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_to_jsonschema(v) for v in value]
        elif key == "x-kubernetes-validations":
            continue  # evaluated separately with CEL
        elif key == "format":
            continue  # int32/int64/date-time... are not enforced as JSON Schema formats
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_META_KEYS = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


def _check_metadata(doc: dict, namespaced: bool) -> list[str]:
    errors = []
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: must be an object"]
    for k in meta:
        if k not in _META_KEYS:
            errors.append(f"metadata.{k}: unknown field")
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not _DNS1123_LABEL.match(ns)):
        errors.append(f"metadata.namespace: {ns!r} is not a DNS-1123 label")
    if ns is not None and not namespaced:
        errors.append("metadata.namespace: set on a cluster-scoped kind")
    for field in ("labels", "annotations"):
        m = meta.get(field)
        if m is None:
            continue
        if not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values()):
            errors.append(f"metadata.{field}: must map strings to strings")
    return errors


@functools.lru_cache(maxsize=64)
def _cel_program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(schema: dict, instance: Any, path: str) -> list[str]:
    """Evaluate x-kubernetes-validations rules (skipping transition rules)."""
    import celpy

    errors: list[str] = []
    if not isinstance(schema, dict):
        return errors
    for rule in schema.get("x-kubernetes-validations", []) or []:
        expr = rule["rule"]
        if "oldSelf" in expr:
            continue
        try:
            ok = _cel_program(expr).evaluate({"self": celpy.json_to_cel(instance)})
        except Exception as exc:  # a rule that cannot evaluate is a failure too
            errors.append(f"{path or '<root>'}: CEL rule {expr!r} could not be evaluated: {exc}")
            continue
        if not bool(ok):
            errors.append(f"{path or '<root>'}: {rule.get('message') or expr}")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for k, v in instance.items():
            if k in props:
                errors += _cel_errors(props[k], v, f"{path}.{k}" if path else k)
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _cel_errors(schema["additionalProperties"], v, f"{path}.{k}" if path else k)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(instance):
            errors += _cel_errors(schema["items"], v, f"{path}[{i}]")
    return errors


@functools.lru_cache(maxsize=64)
def _crd_validator(key: tuple[str, str, str]):
    import jsonschema

    schema = copy.deepcopy(crds()[key].schema)
    props = schema.setdefault("properties", {})
    props["metadata"] = {"type": "object"}  # checked by _check_metadata
    return jsonschema.Draft7Validator(_to_jsonschema(schema))


def validate_custom(doc: dict, crd: CrdVersion) -> list[str]:
    errors = []
    if crd.deprecated:
        errors.append(f"{crd.group}/{crd.version} is deprecated in its CRD ({crd.source})")
    errors += _check_metadata(doc, crd.scope == "Namespaced")
    validator = _crd_validator((crd.group, crd.version, crd.kind))
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{where}: {err.message}")
    errors += _cel_errors(crds()[(crd.group, crd.version, crd.kind)].schema, doc, "")
    return errors


def validate_builtin(doc: dict) -> list[str] | None:
    """kubernetes-validate --strict; None when it has no schema for the kind."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path) or "<root>"
        return [f"{where}: {err.message}"]
    return []


def validate_manifest(doc: dict) -> list[str]:
    """Errors for one Kubernetes object: built-in kinds against Kubernetes'
    OpenAPI schemas (strict), custom kinds against their CRD; anything else
    is an unknown kind."""
    if not isinstance(doc, dict):
        return ["document is not a mapping"]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind are required"]
    group, version = split_api_version(api_version)
    table = crds()
    if (group, version, kind) in table:
        return validate_custom(doc, table[(group, version, kind)])
    if (group, version, kind) == PROMETHEUS_RULE:
        return validate_prometheus_rule(doc)
    if (group, version, kind) == certmanager.CERTIFICATE:
        return _check_metadata(doc, namespaced=True) + certmanager.validate_certificate(doc)
    builtin = validate_builtin(doc)
    if builtin is not None:
        return builtin
    served = sorted(f"{g}/{v}" for (g, v, k) in table if k == kind)
    hint = f" (CRDs serve {', '.join(served)})" if served else ""
    return [f"unknown kind {kind} in {api_version}: no built-in schema for Kubernetes {KUBE_VERSION} and no served CRD version{hint}"]


# The shared CRD set has no PrometheusRule CRD; its spec is a Prometheus rule file, which
# promtool (the real parser Prometheus loads rule files with) checks in full.
PROMETHEUS_RULE = ("monitoring.coreos.com", "v1", "PrometheusRule")


def validate_prometheus_rule(doc: dict) -> list[str]:
    import tempfile

    errors = _check_metadata(doc, namespaced=True)
    spec = doc.get("spec")
    if not isinstance(spec, dict) or set(spec) - {"groups"} or not isinstance(spec.get("groups"), list):
        return errors + ["spec: must be an object holding only `groups` (a list)"]
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        raise SetupError("promtool not found: PrometheusRule specs are checked with it (Debian package prometheus)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": spec["groups"]}))
        out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        errors.append(f"spec.groups: promtool check rules: {(out.stdout + out.stderr).strip()}")
    return errors


def validate_docs(docs: Iterable[dict]) -> list[str]:
    errors = []
    for doc in docs:
        errors += [f"{ident(doc)}: {e}" for e in validate_manifest(doc)]
    return errors


# --------------------------------------------------------------------------
# Helm (real engine via helm-python-sdk)


def ci_values_files() -> list[Path]:
    return sorted(CHART_CI.glob("*.yaml"))


def values_sets() -> dict[str, dict]:
    """name -> values; 'default' plus one per ci/ file."""
    sets: dict[str, dict] = {"default": {}}
    for f in ci_values_files():
        sets[f.stem] = yaml.safe_load(f.read_text()) or {}
    return sets


def helm_lint(values: dict, chart: Path = CHART) -> list[str]:
    import helm_python as helm

    report = helm.lint(str(chart), values, strict=True, namespace=RELEASE_NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    errors = list(report.get("errors") or [])
    for m in report.get("messages") or []:
        # 1 = INFO (e.g. "icon is recommended"); warnings and errors fail.
        if m.get("severity", 0) >= 2:
            errors.append(f"{m.get('path')}: {m.get('error')}")
    return errors


def helm_render(values: dict, chart: Path = CHART) -> dict[str, str]:
    """template path -> rendered text (NOTES.txt included)."""
    import helm_python as helm

    with helm.Chart.load(str(chart)) as c:
        c.validate_schema(values)
        return c.render(values, name=RELEASE_NAME, namespace=RELEASE_NAMESPACE, is_install=True)


def schema_errors(values: dict, chart: Path = CHART) -> list[str]:
    import helm_python as helm

    with helm.Chart.load(str(chart)) as c:
        try:
            c.validate_schema(values)
        except helm.HelmValuesError as err:
            return [str(err)]
    return []


def manifests_of(rendered: dict[str, str]) -> list[dict]:
    docs: list[dict] = []
    for path in sorted(rendered):
        if path.endswith(".yaml") or path.endswith(".yml"):
            docs += load_docs(rendered[path])
    return docs


def notes_of(rendered: dict[str, str]) -> str:
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            return text
    return ""


def rendered_text(rendered: dict[str, str]) -> str:
    """Stable text of a render, as committed under charts/blend-scaler/rendered/."""
    parts = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        body = rendered[path].strip()
        if body:
            parts.append(f"---\n# Source: {path}\n{body}\n")
    return "".join(parts)


NOTES_BEGIN = "----- BEGIN EXAMPLE -----"
NOTES_END = "----- END EXAMPLE -----"


def notes_example(notes: str) -> str:
    """The YAML example between the markers of NOTES.txt."""
    if NOTES_BEGIN not in notes or NOTES_END not in notes:
        raise AssertionError("NOTES.txt has no example between its BEGIN/END markers")
    return notes.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0].strip("\n") + "\n"


# --------------------------------------------------------------------------
# Kustomize and Flux


def kubectl() -> str:
    path = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    if not path:
        raise SetupError("kubectl not found on PATH: `kubectl kustomize` builds the deploy/flux kustomizations")
    return path


def kustomization_dirs(root: Path = FLUX) -> list[Path]:
    names = ("kustomization.yaml", "kustomization.yml", "Kustomization")
    return sorted({p.parent for n in names for p in root.rglob(n)})


def kustomize_build(directory: Path) -> tuple[list[dict], list[str]]:
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return [], [f"kubectl kustomize {directory}: {proc.stderr.strip() or proc.stdout.strip()}"]
    return load_docs(proc.stdout), []


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?=)([^}]*))?\}")


def flux_substitute(doc: dict, variables: dict[str, str]) -> tuple[dict, list[str]]:
    """Flux postBuild substitution of ${VAR} and ${VAR:=default} in one object.

    Stricter than Flux, which silently substitutes an empty string: an undefined
    variable without a default is reported.
    """
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    if annotations.get("kustomize.toolkit.fluxcd.io/substitute") == "disabled":
        return doc, []
    text = yaml.safe_dump(doc, sort_keys=False)
    missing: list[str] = []

    def repl(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3)
        if name in variables:
            return variables[name]
        if op:
            return default or ""
        missing.append(name)
        return m.group(0)

    out = _VAR.sub(repl, text)
    return yaml.safe_load(out), [f"{ident(doc)}: undefined variable ${{{v}}}" for v in sorted(set(missing))]


@dataclass
class FluxKustomization:
    name: str
    path: Path
    depends_on: list[str]
    source: str
    variables: dict[str, str]
    doc: dict


def flux_cluster_objects() -> list[dict]:
    docs, errors = kustomize_build(FLUX_CLUSTER)
    if errors:
        raise AssertionError("\n".join(errors))
    return docs


def flux_kustomizations(cluster_docs: list[dict]) -> list[FluxKustomization]:
    configmaps = {
        d["metadata"]["name"]: d.get("data") or {}
        for d in cluster_docs
        if d.get("kind") == "ConfigMap"
    }
    out = []
    for d in cluster_docs:
        if d.get("kind") != "Kustomization" or not d.get("apiVersion", "").startswith("kustomize.toolkit.fluxcd.io/"):
            continue
        spec = d["spec"]
        variables: dict[str, str] = {}
        post = spec.get("postBuild") or {}
        for ref in post.get("substituteFrom") or []:
            if ref.get("kind") == "ConfigMap":
                variables.update(configmaps.get(ref["name"], {}))
        variables.update(post.get("substitute") or {})
        out.append(
            FluxKustomization(
                name=d["metadata"]["name"],
                path=(REPO / spec["path"]).resolve(),
                depends_on=[x["name"] for x in spec.get("dependsOn") or []],
                source=spec["sourceRef"]["name"],
                variables={k: str(v) for k, v in variables.items()},
                doc=d,
            )
        )
    return out


def flux_applied_objects() -> tuple[dict[str, list[dict]], list[str]]:
    """Objects each Flux Kustomization applies, after postBuild substitution."""
    cluster = flux_cluster_objects()
    result: dict[str, list[dict]] = {"flux-system": cluster}
    errors: list[str] = []
    for k in flux_kustomizations(cluster):
        docs, errs = kustomize_build(k.path)
        errors += errs
        applied = []
        for doc in docs:
            new, errs = flux_substitute(doc, k.variables)
            errors += [f"{k.name}: {e}" for e in errs]
            applied.append(new)
        result[k.name] = applied
    return result, errors


# --------------------------------------------------------------------------
# KEDA triggers and blend-scaler check


def external_triggers(docs: Iterable[dict]) -> list[tuple[str, dict]]:
    found = []
    for d in docs:
        if d.get("kind") not in ("ScaledObject", "ScaledJob"):
            continue
        for i, t in enumerate((d.get("spec") or {}).get("triggers") or []):
            if t.get("type") in ("external", "external-push"):
                found.append((f"{ident(d)} triggers[{i}]", t.get("metadata") or {}))
    return found


def blend_scaler_bin() -> Path:
    raw = os.environ.get("BLEND_SCALER_BIN", "target/release/blend-scaler")
    path = Path(raw)
    return path if path.is_absolute() else REPO / path


def run_check(path: Path) -> tuple[int, str]:
    binary = blend_scaler_bin()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise SetupError(
            f"blend-scaler binary not found at {binary}: build it with `cargo build --release` "
            "or point BLEND_SCALER_BIN at it"
        )
    proc = subprocess.run([str(binary), "check", str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr)


# --------------------------------------------------------------------------
# Bicep


@functools.lru_cache(maxsize=1)
def _bicep_parser():
    import tree_sitter
    import tree_sitter_bicep

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


def bicep_tree(source: bytes):
    return _bicep_parser().parse(source)


def bicep_errors(source: bytes, name: str = "<bicep>") -> list[str]:
    tree = bicep_tree(source)
    errors: list[str] = []

    def walk(node):
        if node.is_error or node.is_missing:
            row, col = node.start_point
            kind = "missing" if node.is_missing else "unexpected"
            text = node.text.decode(errors="replace")[:60] if node.text else node.type
            errors.append(f"{name}:{row + 1}:{col + 1}: {kind} {text!r}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    if tree.root_node.has_error and not errors:
        errors.append(f"{name}: parse error")
    return errors


@dataclass
class BicepResource:
    symbol: str
    type: str
    body: str
    file: str


def bicep_resources(files: Iterable[Path]) -> list[BicepResource]:
    """Every `resource` declaration (type without API version) with its body text."""
    out = []
    for f in files:
        src = f.read_bytes()
        root = bicep_tree(src).root_node
        stack = [root]
        while stack:
            node = stack.pop()
            if node.type == "resource_declaration":
                ident_node = next((c for c in node.children if c.type == "identifier"), None)
                type_node = next((c for c in node.children if c.type == "string"), None)
                rtype = type_node.text.decode().strip("'").split("@", 1)[0] if type_node else ""
                out.append(BicepResource(ident_node.text.decode() if ident_node else "?", rtype, node.text.decode(), f.name))
            stack.extend(node.children)
    return out


SERVICE_BUS_DATA_OWNER = "090c5cfd-751d-490a-894a-3ce6f1109419"


def bicep_requirements(files: Iterable[Path]) -> list[str]:
    """What blend-scaler depends on must be declared; returns what is missing."""
    res = bicep_resources(files)
    by_type: dict[str, list[BicepResource]] = {}
    for r in res:
        by_type.setdefault(r.type.lower(), []).append(r)

    def find(rtype: str) -> list[BicepResource]:
        return by_type.get(rtype.lower(), [])

    def flat(text: str) -> str:
        return re.sub(r"\s+", " ", text)

    missing = []
    namespaces = [r for r in find("Microsoft.ServiceBus/namespaces") if " existing" not in flat(r.body).split("{", 1)[0]]
    if not namespaces:
        missing.append("Service Bus namespace (Microsoft.ServiceBus/namespaces)")
    queues = find("Microsoft.ServiceBus/namespaces/queues")
    if not any("'order-processing'" in r.body for r in queues):
        missing.append("Service Bus queue order-processing (Microsoft.ServiceBus/namespaces/queues)")
    elif not any(re.search(r"deadLetteringOnMessageExpiration:\s*true", r.body) for r in queues):
        missing.append("dead-lettering on the order-processing queue")
    if not find("Microsoft.ServiceBus/namespaces/topics"):
        missing.append("Service Bus topics (Microsoft.ServiceBus/namespaces/topics)")
    if not find("Microsoft.ManagedIdentity/userAssignedIdentities"):
        missing.append("managed identity (Microsoft.ManagedIdentity/userAssignedIdentities)")
    fics = find("Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials")
    if not any("api://AzureADTokenExchange" in r.body and "system:serviceaccount:" in r.body for r in fics):
        missing.append("federated identity credential for a Kubernetes ServiceAccount")
    roles = find("Microsoft.Authorization/roleAssignments")
    if not any(SERVICE_BUS_DATA_OWNER in r.body for r in roles):
        missing.append("role assignment of Azure Service Bus Data Owner (090c5cfd-...) for the scaler")
    clusters = find("Microsoft.ContainerService/managedClusters")
    if not clusters:
        missing.append("AKS cluster (Microsoft.ContainerService/managedClusters)")
    else:
        body = "\n".join(flat(r.body) for r in clusters)
        if not re.search(r"oidcIssuerProfile: \{ enabled: true \}", body):
            missing.append("AKS oidcIssuerProfile.enabled: true")
        if not re.search(r"workloadIdentity: \{ enabled: true \}", body):
            missing.append("AKS securityProfile.workloadIdentity.enabled: true")
    if not find("Microsoft.KeyVault/vaults"):
        missing.append("Key Vault (Microsoft.KeyVault/vaults)")
    return missing
