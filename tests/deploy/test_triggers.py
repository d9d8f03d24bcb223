"""Every `external` trigger in deploy/ and in the chart's NOTES passes
`blend-scaler check FILE` (BLEND_SCALER_BIN, default target/release/blend-scaler)."""

from __future__ import annotations

import pytest

import deploylib as d


def _check(tmp_path, name, docs):
    path = tmp_path / f"{name}.yaml"
    path.write_text(d.dump_docs(docs))
    try:
        return d.run_check(path)
    except d.SetupError as err:
        message = str(err)
    pytest.fail(message, pytrace=False)


def _deploy_scaled_objects(flux_objects):
    objects, errors = flux_objects
    assert errors == []
    found = []
    for docs in objects.values():
        found += [x for x in docs if x.get("kind") in ("ScaledObject", "ScaledJob")]
    return found


def _raw_deploy_scaled_objects():
    """Every ScaledObject anywhere under deploy/, found on disk."""
    names = set()
    for f in d.DEPLOY.rglob("*.y*ml"):
        for doc in d.load_file(f):
            if isinstance(doc, dict) and doc.get("kind") in ("ScaledObject", "ScaledJob"):
                names.add(doc["metadata"]["name"])
    return names


def test_all_deploy_scaled_objects_are_reached(flux_objects):
    applied = {x["metadata"]["name"] for x in _deploy_scaled_objects(flux_objects)}
    assert applied == _raw_deploy_scaled_objects()
    assert {"order-processor-scaler", "api-gateway-scaler"} <= applied


BLEND_SCALED_OBJECTS = {"order-processor-scaler", "api-gateway-scaler", "order-service-scaler"}


def test_seed_scaled_objects_use_one_external_trigger(flux_objects):
    found = {so["metadata"]["name"] for so in _deploy_scaled_objects(flux_objects)}
    assert BLEND_SCALED_OBJECTS <= found
    for so in _deploy_scaled_objects(flux_objects):
        if so["metadata"]["name"] not in BLEND_SCALED_OBJECTS:
            assert {t["type"] for t in so["spec"]["triggers"]} <= {"cpu", "memory"}, so["metadata"]["name"]
            continue
        types = [t["type"] for t in so["spec"]["triggers"]]
        assert types.count("external") == 1, so["metadata"]["name"]
        assert set(types) <= {"external", "cpu", "memory"}
        meta = next(t for t in so["spec"]["triggers"] if t["type"] == "external")["metadata"]
        assert meta["scalerAddress"] == "blend-scaler.blend-scaler.svc.cluster.local:9090"
        assert "windows" not in meta
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    gw = next(x for x in _deploy_scaled_objects(flux_objects) if x["metadata"]["name"] == "api-gateway-scaler")
    assert [t["type"] for t in gw["spec"]["triggers"]] == ["external", "cpu", "memory"]


@pytest.mark.parametrize("name", sorted(BLEND_SCALED_OBJECTS))
def test_deploy_external_triggers_pass_check(flux_objects, tmp_path, name):
    so = next(x for x in _deploy_scaled_objects(flux_objects) if x["metadata"]["name"] == name)
    assert d.external_triggers([so])
    code, out = _check(tmp_path, name, [so])
    assert code == 0, out


@pytest.mark.parametrize("name", list(d.values_sets()))
def test_notes_external_trigger_passes_check(renders, tmp_path, name):
    example = d.load_docs(d.notes_example(d.notes_of(renders[name])))
    assert d.external_triggers(example)
    code, out = _check(tmp_path, f"notes-{name}", example)
    assert code == 0, out
