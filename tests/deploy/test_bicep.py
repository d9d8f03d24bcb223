"""deploy/bicep: every file parses (tree-sitter-bicep, no error nodes) and the
resources blend-scaler depends on are declared."""

from __future__ import annotations

import json
import re

import pytest

import deploylib as d

BICEP_FILES = sorted(d.BICEP.rglob("*.bicep"))


def test_bicep_files_found():
    assert d.BICEP / "main.bicep" in BICEP_FILES
    assert len(BICEP_FILES) >= 5


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(d.BICEP)))
def test_bicep_parses(path):
    assert d.bicep_errors(path.read_bytes(), str(path.relative_to(d.REPO))) == []


def test_scaler_dependencies_declared():
    assert d.bicep_requirements(BICEP_FILES) == []


def test_modules_exist():
    """Every `module x 'path'` in a Bicep file points at a file that exists."""
    for f in BICEP_FILES:
        for target in re.findall(r"^module\s+\w+\s+'([^']+)'", f.read_text(), re.M):
            assert (f.parent / target).is_file(), f"{f.name}: module {target} missing"


def test_seed_cluster_shape():
    aks = next(r for r in d.bicep_resources(BICEP_FILES) if r.type == "Microsoft.ContainerService/managedClusters")
    body = re.sub(r"\s+", " ", aks.body)
    for pool in ("'system'", "'apppool'", "'gpupool'"):
        assert f"name: {pool}" in body
    assert body.count("availabilityZones: [ '1' '2' '3' ]") == 2
    assert "networkPolicy: 'calico'" in body
    assert "azureKeyvaultSecretsProvider: { enabled: true" in body
    assert "omsagent: { enabled: true" in body


def test_service_bus_entities_and_dead_lettering():
    res = d.bicep_resources(BICEP_FILES)
    text = "\n".join(r.body for r in res if r.type.startswith("Microsoft.ServiceBus/"))
    assert "'order-processing'" in text
    sb = (d.BICEP / "modules" / "servicebus.bicep").read_text()
    assert re.search(r"orders:\s*\[", sb) and re.search(r"payments:\s*\[", sb)
    subs = next(r for r in res if r.type == "Microsoft.ServiceBus/namespaces/topics/subscriptions")
    assert "deadLetteringOnMessageExpiration: true" in subs.body
    assert "maxDeliveryCount" in subs.body


def test_federated_credential_matches_chart_service_account():
    ident = (d.BICEP / "modules" / "identity.bicep").read_text()
    main = (d.BICEP / "main.bicep").read_text()
    assert "system:serviceaccount:${scalerNamespace}:${scalerServiceAccount}" in ident
    assert f"param scalerNamespace string = '{d.RELEASE_NAMESPACE}'" in main
    assert f"param scalerServiceAccount string = '{d.RELEASE_NAME}'" in main


def test_parameters_file_names_declared_params():
    params = json.loads((d.BICEP / "main.parameters.json").read_text())["parameters"]
    main = (d.BICEP / "main.bicep").read_text()
    for name in params:
        assert re.search(rf"^param {name}\b", main, re.M), name
