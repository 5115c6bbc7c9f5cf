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
