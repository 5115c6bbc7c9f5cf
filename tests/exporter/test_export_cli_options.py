"""Options of `shoal export` that change how an entry is served.

`--device gpu`: the command line writes the GPU instance group and the onnxruntime accelerator
that a catalog's `instance_kind`/`gpu_accelerator`/`instance_count` keys write, and the entry passes
`shoal repo check` (no GPU is needed to export for one: the parity check runs on the CPU).
`--matryoshka`/`--dims`: the manifest says whether clients may ask for fewer dimensions."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from shoal.cli import main
from shoal.manifest import Manifest
from shoal.model_repository.repository import check_entry

KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU


def _config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_export_for_a_gpu_pool_from_the_command_line(tiny_model, tmp_path, capsys):
    repository = tmp_path / "repository"
    args = ["export", str(tiny_model("bert")), "--repository", str(repository), "--max-length",
            "16", "--runtime", "onnxruntime", "--device", "gpu", "--instances", "2"]  # fmt: skip
    assert main([*args, "--name", "trt", "--accelerator", "tensorrt"]) == 0
    assert main([*args, "--name", "cuda", "--accelerator", "cuda"]) == 0
    capsys.readouterr()

    trt = _config(repository / "trt__encode" / "config.pbtxt")
    (group,) = trt.instance_group
    assert (group.kind, group.count) == (KIND_GPU, 2)
    (accelerator,) = trt.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["trt_profile_max_shapes"].endswith("32x16")

    cuda = _config(repository / "cuda__encode" / "config.pbtxt")
    (accelerator,) = cuda.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "cuda"
    # The python steps stay on the CPU: tokenization and pooling are not GPU work.
    for step in ("tokenize", "postprocess"):
        (group,) = _config(repository / f"cuda__{step}" / "config.pbtxt").instance_group
        assert group.kind == KIND_CPU
    assert not check_entry(repository, "trt").problems
    assert not check_entry(repository, "cuda").problems


def test_the_manifest_says_whether_fewer_dimensions_may_be_asked_for(tiny_model, tmp_path, capsys):
    repository = tmp_path / "repository"
    base = ["export", str(tiny_model("bert")), "--repository", str(repository), "--max-length",
            "16"]  # fmt: skip
    assert main([*base, "--name", "plain"]) == 0
    assert main([*base, "--name", "nested", "--matryoshka"]) == 0
    assert main([*base, "--name", "cut", "--dims", "8"]) == 0
    capsys.readouterr()
    extra = {n: Manifest.read(repository / n).extra for n in ("plain", "nested", "cut")}
    assert [extra[n]["matryoshka"] for n in ("plain", "nested", "cut")] == [False, True, True]
    colbert = ["export", str(tiny_model("colbert")), "--repository", str(repository)]
    assert main([*colbert, "--name", "late", "--matryoshka"]) == 2
    assert "--matryoshka apply to dense embeddings" in capsys.readouterr().err


def test_a_reranker_exported_with_sigmoid_scores_matches_the_sigmoid_of_its_logits(
    tiny_model, tmp_path, capsys
):
    """--score sigmoid: the postprocess step applies it, the parity reference too (so parity
    passing means the served SCORE is sigmoid(first logit)); raw stays the default."""
    import numpy as np

    from shoal.postprocessing import scores

    repository = tmp_path / "repository"
    base = ["export", str(tiny_model("reranker")), "--repository", str(repository)]
    assert main([*base, "--name", "raw"]) == 0
    assert main([*base, "--name", "squashed", "--score", "sigmoid"]) == 0
    capsys.readouterr()
    raw, squashed = (Manifest.read(repository / n) for n in ("raw", "squashed"))
    assert raw.extra["postprocessing"]["score_activation"] == "none"
    assert squashed.extra["postprocessing"]["score_activation"] == "sigmoid"
    assert all(r.passed for r in squashed.parity)
    logits = np.array([[-3.0], [0.0], [2.5]], dtype=np.float32)
    served = scores(logits, squashed.extra["postprocessing"])
    np.testing.assert_allclose(served[:, 0], 1 / (1 + np.exp(-logits[:, 0])), rtol=1e-6)
    embed = ["export", str(tiny_model("bert")), "--repository", str(repository)]
    assert main([*embed, "--name", "vectors", "--score", "sigmoid"]) == 2
    assert "--score applies to rerankers" in capsys.readouterr().err
