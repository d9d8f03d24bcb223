"""Each check fails on a deliberately broken input (tests/deploy/broken/), so a
green run means the checks ran, not that they cannot fail."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

import deploylib as d

BROKEN = Path(__file__).parent / "broken"


def errors_of(name):
    return d.validate_docs(d.load_file(BROKEN / name))


def test_broken_builtin_kind(crd_table):
    errors = errors_of("builtin-deployment.yaml")
    assert errors and "spec.replicas" in errors[0]


def test_builtin_unknown_field_is_rejected(crd_table):
    errors = errors_of("builtin-unknown-field.yaml")
    assert errors and "targetPortt" in " ".join(errors)


def test_broken_custom_kind(crd_table):
    text = " | ".join(errors_of("custom-scaledobject.yaml"))
    assert "'trigger' was unexpected" in text  # unknown field
    assert "messageCount: 10 is not of type 'string'" in text  # wrong type
    assert "minReplicaCount must be less than or equal to maxReplicaCount" in text  # CEL rule


def test_broken_custom_kind_cel_and_type(crd_table):
    text = " | ".join(errors_of("custom-helmrelease.yaml"))
    assert "either chart or chartRef must be set" in text
    assert "spec.interval: 10 is not of type 'string'" in text


def test_unknown_kind(crd_table):
    errors = errors_of("unknown-kind.yaml")
    assert errors and "unknown kind Widget" in errors[0]


def test_unserved_crd_version_is_unknown(crd_table):
    errors = errors_of("unserved-version.yaml")
    assert errors and "helm.toolkit.fluxcd.io/v2" in errors[0] and "unknown kind" in errors[0]


def test_bad_custom_metadata_name(crd_table):
    doc = d.load_file(BROKEN / "unserved-version.yaml")[0]
    doc["apiVersion"] = "helm.toolkit.fluxcd.io/v2"
    doc["metadata"]["name"] = "Not_A_Name"
    assert any("DNS-1123" in e for e in d.validate_manifest(doc))


def test_bad_values_rejected_by_schema():
    values = yaml.safe_load((BROKEN / "bad-values.yaml").read_text())
    errors = d.schema_errors(values)
    assert errors
    text = errors[0]
    for key in ("replicaCount", "source", "logFormat", "readOnlyRootFilesystem"):
        assert key in text, f"schema error does not name {key}: {text}"


def test_bad_values_fail_the_render():
    import helm_python as helm

    values = yaml.safe_load((BROKEN / "bad-values.yaml").read_text())
    with pytest.raises(helm.HelmError):
        d.helm_render(values)


@pytest.mark.parametrize("name", ["kustomization-missing-resource", "kustomization-bad-yaml"])
def test_broken_kustomization(name):
    docs, errors = d.kustomize_build(BROKEN / name)
    assert docs == [] and errors and "kubectl kustomize" in errors[0]


def test_undefined_flux_variable_is_reported():
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "${NOT_DEFINED}", "b": "${WITH_DEFAULT:=ok}"}}
    out, errors = d.flux_substitute(doc, {})
    assert errors == ["ConfigMap x: undefined variable ${NOT_DEFINED}"]
    assert out["data"]["b"] == "ok"
    disabled = {**doc, "metadata": {"name": "x", "annotations": {"kustomize.toolkit.fluxcd.io/substitute": "disabled"}}}
    assert d.flux_substitute(disabled, {}) == (disabled, [])


def test_broken_bicep():
    errors = d.bicep_errors((BROKEN / "broken.bicep").read_bytes(), "broken.bicep")
    assert errors and errors[0].startswith("broken.bicep:")


def test_incomplete_bicep_is_reported():
    missing = d.bicep_requirements([BROKEN / "incomplete.bicep"])
    for needle in ("queue", "managed identity", "federated identity credential", "Data Owner", "oidcIssuerProfile", "workloadIdentity"):
        assert any(needle in m for m in missing), f"{needle} not reported: {missing}"
    assert not any(m.startswith("Service Bus namespace") for m in missing)


def test_bad_external_trigger_metadata():
    try:
        code, out = d.run_check(BROKEN / "bad-trigger.yaml")
    except d.SetupError as err:
        message = str(err)
        code, out = None, ""
    if code is None:
        pytest.fail(message, pytrace=False)
    assert code == 1, out
    for key in ("queueNmae", "messageCount", "policy"):
        assert key in out, f"check output does not name {key}:\n{out}"


def test_missing_shared_dir_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [
            "python",
            "-c",
            "import deploylib as d\ntry:\n    d.crd_dir()\nexcept d.SetupError as e:\n    print(e)\n    raise SystemExit(3)",
        ],
        cwd=Path(__file__).parent,
        env={"BLEND_SCALER_SHARED": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        executable=__import__("sys").executable,
    )
    assert proc.returncode == 3, proc.stderr
    assert "CRD reference files not found" in proc.stdout
    assert "BLEND_SCALER_SHARED" in proc.stdout and str(tmp_path / "nowhere" / "crds") in proc.stdout
