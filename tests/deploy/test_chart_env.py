"""Every environment variable the chart sets is one the binary reads.

A renamed flag would otherwise leave the chart setting a variable nothing reads, and the pod
would start with the default silently (the adapter's address unset, say)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

import deploylib as d

# Read from the environment by the access rules, not as flags, so not in `serve --help`: by
# prefix (one variable per named credential or server), and one by name.
FAMILIES = (
    "BLEND_SCALER_CREDENTIAL_",
    "BLEND_SCALER_PROMETHEUS_CREDENTIAL_",
    "BLEND_SCALER_PROMETHEUS_SERVER_",
    "BLEND_SCALER_WORKLOAD_IDENTITY_NAMESPACES",
)


def binary():
    path = d.blend_scaler_bin()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise d.SetupError(f"blend-scaler binary not found at {path}: point BLEND_SCALER_BIN at it")
    return path


@pytest.fixture(scope="module")
def serve_env_names() -> set[str]:
    out = subprocess.run([str(binary()), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names = set(re.findall(r"\[env: ([A-Z0-9_]+)=", out.stdout))
    assert "BLEND_SCALER_GRPC_ADDR" in names, "serve --help no longer lists its variables"
    return names


def chart_env_names(renders) -> dict[str, set[str]]:
    """Variable name -> the values sets that render it."""
    seen: dict[str, set[str]] = {}
    for set_name, rendered in renders.items():
        for doc in d.manifests_of(rendered):
            if doc.get("kind") != "Deployment":
                continue
            for c in doc["spec"]["template"]["spec"].get("containers", []):
                for e in c.get("env", []):
                    if e["name"].startswith("BLEND_SCALER_"):
                        seen.setdefault(e["name"], set()).add(set_name)
    return seen


def test_every_variable_the_chart_sets_is_one_serve_reads(renders, serve_env_names):
    names = chart_env_names(renders)
    assert "BLEND_SCALER_EXTERNAL_METRICS_ADDR" in names, "no values set renders the adapter"
    unread = {
        n: sorted(sets)
        for n, sets in names.items()
        if n not in serve_env_names and not n.startswith(FAMILIES)
    }
    assert not unread, f"the chart sets variables `serve` does not read: {unread}"


def test_the_variables_read_outside_the_flags_are_named_in_the_binary(renders):
    used = {f for n in chart_env_names(renders) for f in FAMILIES if n.startswith(f)}
    assert len(used) >= 2, f"the values sets render few of the families: {used}"
    image = binary().read_bytes()
    missing = [f for f in used if f.encode() not in image]
    assert not missing, f"the binary reads no variables named {missing}*"
