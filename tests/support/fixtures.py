"""Session-scoped fixtures over the tiny model builders (registered in tests/conftest.py).

    def test_export(tiny_model):
        folder = tiny_model("bert")            # built once per session, then reused
        folder = tiny_model("bert", seed=3)    # other overrides get their own folder

Treat the returned folder as read-only: copy it before modifying (tests of corrupt checkpoints).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_models import build_tiny_model

TinyModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    os.environ["HF_HUB_OFFLINE"] = "1"
    pytest.importorskip("torch", reason="tiny models need the `export` extra (torch)")
    pytest.importorskip("transformers", reason="tiny models need the `export` extra")
    built: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}

    def factory(family: str, **overrides: Any) -> Path:
        key = (family, tuple(sorted(overrides.items())))
        if key not in built:
            suffix = "-".join(f"{k}={v}" for k, v in key[1])
            folder = tmp_path_factory.mktemp(f"tiny-{family}{'-' + suffix if suffix else ''}")
            built[key] = build_tiny_model(family, folder, **overrides)
        return built[key]

    return factory


@pytest.fixture(scope="session")
def client_entries(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with `embedder` and `reranker` (tests/runtime/entries.py's client limits),
    exported once for every test that only reads it."""
    from tests.runtime.entries import (
        CLIENT_MAX_BATCH_SIZE,
        CLIENT_MAX_TEXT_BYTES,
        export_embedder_and_reranker,
    )

    path = tmp_path_factory.mktemp("client-entries") / "repository"
    export_embedder_and_reranker(
        tiny_model, path, max_batch_size=CLIENT_MAX_BATCH_SIZE, max_text_bytes=CLIENT_MAX_TEXT_BYTES
    )
    return path
