"""Exports of every tiny family, made once per session and shared by the exporter tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.tiny_models import FAMILIES, FAMILY_EXPORT_OPTIONS
from tests.support.triton import triton_server  # noqa: F401  (fixture: tests serve exports)

PROBE_MAX_LENGTH = 48  # short, so the long probe is truncated and exports stay quick


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def exported(tiny_model, tmp_path_factory):
    """family -> (repository, manifest), exported on first use."""
    from shoal.exporter import ExportOptions, export_model

    repository = tmp_path_factory.mktemp("exported") / "repository"
    done: dict[str, tuple[Path, object]] = {}

    def get(family: str):
        assert family in FAMILIES
        if family not in done:
            name = family.replace("-", "_")
            options = {"max_length": PROBE_MAX_LENGTH, **FAMILY_EXPORT_OPTIONS.get(family, {})}
            manifest = export_model(tiny_model(family), name, repository, ExportOptions(**options))
            done[family] = (repository, manifest)
        return done[family]

    return get
