"""Every family: exported from a tiny random checkpoint and verified at parity on padded batches;
the registry checked both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.contract import OUTPUTS_BY_TASK, Task
from shoal.manifest import Manifest
from shoal.model_repository.layout import EntryLayout
from tests.support.tiny_models import FAMILIES, FAMILY_EXPORT_OPTIONS

EXPECTED_TASK = {
    "bert": Task.EMBED,
    "xlm-roberta": Task.EMBED,
    "modernbert": Task.EMBED,
    "qwen2": Task.EMBED,
    "qwen3": Task.EMBED,
    "reranker": Task.RERANK,
    "colbert": Task.COLBERT,
    "splade": Task.SPARSE,
    "bge-m3": Task.MULTI,
    "token-classification": Task.EXTRACT,
    "gliner": Task.EXTRACT_ZERO_SHOT,
    "clip": Task.IMAGE_TEXT,  # the text entry here; tests/exporter/test_image_text.py: both
    "siglip": Task.IMAGE_TEXT,
    "llm-reranker": Task.RERANK,
}


def test_registry_and_tiny_families_cover_each_other():
    from shoal.exporter.adapters import ADAPTERS

    assert set(ADAPTERS) == set(FAMILIES) == set(EXPECTED_TASK)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_from_its_checkpoint(family, tiny_model):
    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint

    task = FAMILY_EXPORT_OPTIONS.get(family, {}).get("task")
    assert detect_adapter(inspect_checkpoint(tiny_model(family)), task=task).name == family


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_exports_at_fp32_parity_on_padded_batches(family, exported):
    repository, manifest = exported(family)
    assert manifest.architecture == family and manifest.task == EXPECTED_TASK[family]
    assert {o.name for o in manifest.outputs} == set(OUTPUTS_BY_TASK[Task(manifest.task)])
    assert manifest.parity and all(r.passed and r.dtype == "fp32" for r in manifest.parity)
    for result in manifest.parity:
        if result.output == "pixel_values":  # image entries' preprocessing, per probe image
            continue
        assert any(k.startswith("padded/") for k in result.details)  # the padded batch ran
        assert any(k.startswith("batch1/") for k in result.details)
    layout = EntryLayout(repository, manifest.name, manifest.version)
    assert layout.onnx_path.is_file() and (layout.tokenizer_dir / "tokenizer.json").is_file()
    assert set(manifest.sha256) >= {layout.onnx_path.relative_to(repository).as_posix()}
    assert Manifest.read(layout.ensemble_dir) == manifest
    if family in ("bert", "xlm-roberta", "reranker", "colbert", "splade", "bge-m3"):
        assert manifest.fused_attention == manifest.extra["num_layers"]  # every block fused
    assert manifest.memory_bytes > manifest.weights_bytes > 0
    assert manifest.parameter_count > 0
    assert len(manifest.source_sha256) == 64


@pytest.mark.slow
def test_decoder_embedders_pad_left_with_last_token_pooling(exported):
    _, manifest = exported("qwen3")
    assert manifest.padding_side == "left" and manifest.pooling == "last-token"
    assert manifest.prefixes["query"].startswith("Instruct:")  # from the ST prompts
    assert any(k.startswith("queries/") for k in manifest.parity[0].details)


@pytest.mark.slow
def test_a_batch_gives_the_same_vectors_as_single_texts(exported):
    """Left padding included: positions count real tokens only."""
    from shoal.exporter.parity import onnx_session
    from shoal.postprocessing import postprocess
    from shoal.tokenization import TextEncoder

    for family in ("qwen2", "bert"):
        repository, manifest = exported(family)
        layout = EntryLayout(repository, manifest.name, manifest.version)
        encoder = TextEncoder.from_file(
            layout.tokenizer_dir / "tokenizer.json", manifest.extra["tokenization"]
        )
        session = onnx_session(layout.onnx_path)
        texts = ["a shoal of small fish moves as one through the reef", "fish", "東京 🐟"]

        def embed(batch, encoder=encoder, session=session, manifest=manifest):
            tokens = encoder.encode(batch)
            feed = {i.name: tokens[i.name] for i in session.get_inputs()}
            graph = dict(
                zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True)
            )
            return postprocess(
                "embed",
                graph,
                tokens["input_ids"],
                tokens["attention_mask"],
                manifest.extra["postprocessing"],
            )["EMBEDDING"]

        together = embed(texts)
        alone = np.concatenate([embed([t]) for t in texts])
        np.testing.assert_allclose(together, alone, atol=1e-5, err_msg=family)


@pytest.mark.slow
def test_colbert_manifest_records_markers_and_query_length(exported):
    _, manifest = exported("colbert")
    colbert = manifest.extra["tokenization"]["colbert"]
    assert colbert["query_length"] == 32
    assert manifest.dims == 16 and manifest.extra["postprocessing"]["colbert"]["skiplist_ids"]
    assert any(k.startswith("queries/") for k in manifest.parity[0].details)


@pytest.mark.slow
def test_verify_reruns_parity_of_an_existing_entry(exported, capsys):
    from shoal.cli import main
    from shoal.exporter import verify_entry

    repository, manifest = exported("bge-m3")
    results = verify_entry(repository / manifest.name)
    assert {r.output for r in results} == {"EMBEDDING", "SPARSE_VALUES", "COLBERT_VECTORS"}
    assert all(r.passed for r in results)
    assert main(["verify", str(repository / manifest.name)]) == 0
    assert "COLBERT_VECTORS" in capsys.readouterr().out


@pytest.mark.slow
def test_verify_fails_when_the_graph_no_longer_matches(exported, tmp_path):
    import shutil

    from shoal.cli import main

    repository, manifest = exported("bert")
    copy = tmp_path / "repository"
    shutil.copytree(
        repository, copy, ignore=shutil.ignore_patterns("qwen*", "bge*", "splade*", "colbert*")
    )
    entry = copy / manifest.name
    step = json.loads((entry / "shoal.json").read_text())
    step["extra"]["postprocessing"]["pooling"] = "cls"  # the entry now pools differently
    (entry / "shoal.json").write_text(json.dumps(step))
    assert main(["verify", str(entry)]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_reduced_precision_exports_record_both_parities(dtype, tiny_model, tmp_path):
    from shoal.exporter import ExportOptions, export_model

    manifest = export_model(
        tiny_model("bert"), "m", tmp_path / "repo", ExportOptions(max_length=48, dtype=dtype)
    )
    by_dtype = {r.dtype: r for r in manifest.parity}
    assert set(by_dtype) == {"fp32", dtype} and all(r.passed for r in manifest.parity)
    assert by_dtype[dtype].threshold == {"int8": 0.99, "fp16": 0.999}[dtype]
    assert manifest.dtype == dtype
