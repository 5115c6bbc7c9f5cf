"""sentence-transformers Dense modules after pooling (Stella-style projections: Qwen2 plus a
Linear to 1024 dims): exported folded into the graph (each token's state projected, then pooled:
exact for the linear modules sentence-transformers uses), with the width they select, parity
checked at export against the reference (pool, then project), and served on the real Triton
with the same vectors as sentence-transformers' own `encode`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from shoal.exporter import ExportOptions, export_model

pytestmark = [pytest.mark.triton, pytest.mark.timeout(600)]
TEXTS = ["a shoal of fish", "Triton serves many small models", "Ångström, naïve café"]


def _add_dense(folder, in_features: int, widths: list[int], seed: int = 0) -> None:
    """Dense modules between Pooling and Normalize, as sentence-transformers saves them."""
    import torch
    from safetensors.torch import save_file

    modules = json.loads((folder / "modules.json").read_text())
    normalize = [m for m in modules if m["type"].endswith("Normalize")]
    modules = [m for m in modules if not m["type"].endswith("Normalize")]
    generator = torch.Generator().manual_seed(seed)
    for width in widths:
        path = f"{len(modules)}_Dense"
        (folder / path).mkdir()
        config = {"in_features": in_features, "out_features": width, "bias": True,
                  "activation_function": "torch.nn.modules.linear.Identity"}  # fmt: skip
        (folder / path / "config.json").write_text(json.dumps(config))
        weights = {
            "linear.weight": torch.randn(width, in_features, generator=generator) * 0.2,
            "linear.bias": torch.randn(width, generator=generator) * 0.1,
        }
        save_file(weights, str(folder / path / "model.safetensors"))
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": path,
                        "type": "sentence_transformers.models.Dense"})  # fmt: skip
        in_features = width
    for module in normalize:
        modules.append({**module, "idx": len(modules), "name": str(len(modules))})
    (folder / "modules.json").write_text(json.dumps(modules))


@pytest.mark.parametrize("family", ["bert", "qwen3"])
def test_dense_heads_export_and_serve_as_sentence_transformers_encodes(
    family, tiny_model, tmp_path, triton_server
):
    import tritonclient.http as httpclient
    from sentence_transformers import SentenceTransformer

    source = tmp_path / "stella-like"
    pooling = "lasttoken" if family == "qwen3" else "mean"
    shutil.copytree(tiny_model(family, sentence_transformers_pooling=pooling), source)
    _add_dense(source, in_features=32, widths=[48, 24])  # a stack, as N_Dense* modules go
    repository = tmp_path / "repository"
    manifest = export_model(source, "stella", repository, ExportOptions(max_length=32))
    assert manifest.dims == 24
    assert all(result.passed for result in manifest.parity), manifest.parity

    expected = SentenceTransformer(str(source), device="cpu").encode(TEXTS)
    assert expected.shape == (3, 24)
    server = triton_server(repository, load_models=["stella"])
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    text = httpclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=object))
    served = client.infer("stella", [text]).as_numpy("EMBEDDING")
    cosine = (served * expected).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(
        expected, axis=1
    )
    assert cosine.min() >= 0.99999, cosine
    np.testing.assert_allclose(served, expected, atol=1e-4)
