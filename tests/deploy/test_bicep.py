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


# ---- the dead-letter path, lock timing, the seed's data services ---------------


def _iso_seconds(text: str) -> int:
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", text)
    assert m and any(m.groups()), f"not an ISO 8601 duration: {text}"
    h, mi, s = (int(x or 0) for x in m.groups())
    return h * 3600 + mi * 60 + s


def _queue_props(name: str) -> str:
    for r in d.bicep_resources(BICEP_FILES):
        if r.type == "Microsoft.ServiceBus/namespaces/queues" and f"name: '{name}'" in r.body and " existing" not in r.body.split("{", 1)[0]:
            return r.body
    raise AssertionError(f"no Bicep queue {name}")


def _applied(flux_objects, kind, name=None):
    objects, errors = flux_objects
    assert errors == []
    return [x for docs in objects.values() for x in docs if x.get("kind") == kind and (name is None or x["metadata"]["name"] == name)]


def dead_letter_resend_errors(queue_body: str, keeps_message_id: bool) -> list[str]:
    """A re-send that keeps the original MessageId into a queue with duplicate
    detection is discarded inside the history window: the order is lost once
    the dead-lettered copy is completed."""
    dup = re.search(r"requiresDuplicateDetection:\s*(true|false)", queue_body)
    if keeps_message_id and dup and dup.group(1) == "true":
        return ["duplicate detection is on and the DLQ processor re-sends with the same MessageId: re-sent copies are dropped"]
    return []


def test_the_dead_letter_resend_cannot_be_dropped(flux_objects):
    dlq = _applied(flux_objects, "Deployment", "dlq-processor")[0]
    env = {e["name"]: e.get("value") for e in dlq["spec"]["template"]["spec"]["containers"][0]["env"]}
    queue = env["SERVICEBUS_QUEUE_NAME"]
    # The seed's ServiceBusDeadLetterProcessor keeps MessageId = message.MessageId.
    assert dead_letter_resend_errors(_queue_props(queue), keeps_message_id=True) == []
    deploy_md = (d.REPO / "docs" / "deploy.md").read_text()
    assert "Dead-letter pattern" in deploy_md and "requiresDuplicateDetection" in deploy_md


def test_the_dead_letter_rule_fails_on_the_seed_queue():
    seed = "properties: { lockDuration: 'PT1M' requiresDuplicateDetection: true duplicateDetectionHistoryTimeWindow: 'PT10M' }"
    assert dead_letter_resend_errors(seed, keeps_message_id=True)
    assert dead_letter_resend_errors(seed, keeps_message_id=False) == []


def test_lock_duration_leaves_margin_for_renewal(flux_objects):
    pubsub = _applied(flux_objects, "Component", "order-pubsub")[0]
    renew = int(next(m["value"] for m in pubsub["spec"]["metadata"] if m["name"] == "lockRenewalInSec"))
    locks = re.findall(r"lockDuration:\s*'([^']+)'", "\n".join(f.read_text() for f in BICEP_FILES))
    assert len(locks) >= 2, "queue and subscriptions declare their lock duration"
    for lock in locks:
        # Renew at most a third of the way into the lock: two renewals may fail.
        assert _iso_seconds(lock) >= 3 * renew, f"lockDuration {lock} vs lockRenewalInSec {renew}"


def test_cosmos_db_and_storage_for_the_dapr_components(flux_objects):
    res = d.bicep_resources(BICEP_FILES)
    types = {r.type for r in res}
    for t in (
        "Microsoft.DocumentDB/databaseAccounts",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers",
        "Microsoft.Storage/storageAccounts",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
    ):
        assert t in types, t
    comps = {c["metadata"]["name"]: {m["name"]: m for m in c["spec"]["metadata"]} for c in _applied(flux_objects, "Component")}
    state, blob = comps["order-state"], comps["document-storage"]
    text = "\n".join(r.body for r in res)
    assert f"name: '{state['database']['value']}'" in text and f"name: '{state['collection']['value']}'" in text
    assert "'/partitionKey'" in text  # what Dapr's Cosmos DB state store requires
    assert f"name: '{blob['containerName']['value']}'" in text
    main = (d.BICEP / "main.bicep").read_text()
    assert f"param storageAccountName string = '{blob['accountName']['value']}'" in main
    assert state["url"]["value"] == f"https://{re.search(r'param cosmosAccountName string = .([a-z0-9-]+).', main).group(1)}.documents.azure.com:443/"


def test_every_secret_a_dapr_component_reads_is_created_in_key_vault(flux_objects):
    created = set()
    for r in d.bicep_resources(BICEP_FILES):
        if r.type == "Microsoft.KeyVault/vaults/secrets":
            created |= set(re.findall(r"^\s*name:\s*'([a-z0-9-]+)'", r.body, re.M))
    wanted = {
        m["secretKeyRef"]["name"]
        for c in _applied(flux_objects, "Component")
        for m in c["spec"].get("metadata") or []
        if "secretKeyRef" in m
    }
    assert wanted and wanted <= created, f"not created by Bicep: {sorted(wanted - created)}"


def test_cluster_identity_is_network_contributor_on_subnet_and_route_table():
    res = d.bicep_resources(BICEP_FILES)
    src = (d.BICEP / "modules" / "network-roles.bicep").read_text()
    assert re.search(r"var networkContributor = '4d97b98b-1d4f-4787-a291-c67834d212e7'", src)
    roles = [r for r in res if r.type == "Microsoft.Authorization/roleAssignments" and "roleDefinitions', networkContributor)" in r.body]
    scopes = {re.search(r"scope:\s*(\w+)", r.body).group(1) for r in roles}
    assert {"subnet", "routeTable"} <= scopes
    aks = (d.BICEP / "modules" / "aks.bicep").read_text()
    assert "type: 'UserAssigned'" in aks
    main = re.sub(r"\s+", " ", (d.BICEP / "main.bicep").read_text())
    assert "principalId: aksControlPlaneIdentity.properties.principalId" in main
    assert re.search(r"module aks 'modules/aks.bicep' = \{ name: 'aks' dependsOn: \[ networkRoles \]", main)


def test_cluster_settings_name_real_bicep_outputs():
    text = (d.FLUX_CLUSTER / "cluster-settings.yaml").read_text()
    main = (d.BICEP / "main.bicep").read_text()
    named = set()
    for line in re.findall(r"#\s*bicep outputs? (.*)", text):
        named |= set(re.findall(r"\b[a-z]+[A-Z][A-Za-z]*\b", line))
    assert {"scalerIdentityClientId", "cosmosAccountEndpoint", "storageAccountName"} <= named
    for out in named:
        assert re.search(rf"^output {out}\b", main, re.M), f"cluster-settings.yaml names bicep output {out}, main.bicep has none"
