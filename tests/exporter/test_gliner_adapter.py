"""The gliner family's planning: detection from gliner_config.json, options that do not apply,
GLiNER variants shoal does not export, and --max-length."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shoal.exporter.errors import ExportError
from shoal.exporter.options import ExportOptions


@pytest.fixture(scope="module")
def gliner_folder(tiny_model) -> Path:
    pytest.importorskip("gliner", reason="the tiny GLiNER is built by the `gliner` package")
    return tiny_model("gliner")


def adapter_for(folder: Path):
    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint

    return detect_adapter(inspect_checkpoint(folder))


def test_a_gliner_folder_plans_its_span_settings(gliner_folder: Path) -> None:
    plan = adapter_for(gliner_folder).plan(ExportOptions())
    assert plan.task.value == "extract-zero-shot" and plan.family == "gliner"
    tokenization = plan.tokenization
    assert (tokenization["max_width"], tokenization["max_words"], tokenization["max_labels"]) == (
        4,
        64,
        8,
    )
    assert tokenization["ent_token"] == "<<ENT>>" and tokenization["default_threshold"] == 0.5
    assert plan.hidden_size == 32  # the encoder's, from gliner_config.json's encoder_config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ExportOptions(pooling="mean"), "--pooling does not apply to task extract-zero-shot"),
        (ExportOptions(aggregation="max", dims=8), "--dims, --aggregation do not apply"),
        (ExportOptions(task="embed"), "exports task 'extract-zero-shot', not 'embed'"),
        (ExportOptions(max_length=100_000), "exceeds the encoder's 256 positions"),
    ],
)
def test_options_that_do_not_fit_a_gliner_are_refused(gliner_folder, options, message) -> None:
    with pytest.raises(ExportError, match=message):
        adapter_for(gliner_folder).plan(options)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels_encoder": "bert-base"}, "sets labels_encoder: a bi-encoder"),
        ({"relations_layer": "biaffine"}, "sets relations_layer: a relation extraction"),
        ({"span_mode": "token_level"}, "span_mode 'token_level'"),
    ],
)
def test_gliner_variants_shoal_does_not_export_are_refused(
    gliner_folder: Path, tmp_path: Path, change: dict, message: str
) -> None:
    folder = tmp_path / "variant"
    shutil.copytree(gliner_folder, folder)
    config_path = folder / "gliner_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(ExportError, match=message):
        adapter_for(folder).plan(ExportOptions())
