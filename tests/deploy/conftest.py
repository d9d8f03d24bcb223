"""Fixtures shared by the deploy validation tests (scripts/validate-deploy)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import deploylib as d  # noqa: E402


@pytest.fixture(scope="session")
def crd_table():
    try:
        return d.crds()
    except d.SetupError as err:
        message = str(err)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def values_sets():
    return d.values_sets()


@pytest.fixture(scope="session")
def renders(values_sets):
    """values-set name -> rendered templates (real Helm engine)."""
    return {name: d.helm_render(values) for name, values in values_sets.items()}


@pytest.fixture(scope="session")
def flux_objects():
    objects, errors = d.flux_applied_objects()
    return objects, errors


def pytest_report_header(config):
    return [
        f"blend-scaler deploy validation: Kubernetes {d.KUBE_VERSION}, shared dir {d.shared_dir()}, "
        f"check binary {d.blend_scaler_bin()}"
    ]
