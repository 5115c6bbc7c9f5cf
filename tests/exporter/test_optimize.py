"""optimize_graph: BERT-family exports end with every attention block fused, at fp32 parity."""

from __future__ import annotations

import onnx
import pytest

from tests.exporter import graph_support as gs

pytest.importorskip("torch", reason="needs the `export` extra")
pytest.importorskip("onnxruntime.transformers", reason="needs the `export` extra")

from shoal.exporter.mask_rewrite import canonicalize_padding_mask  # noqa: E402
from shoal.exporter.optimize import (  # noqa: E402
    fusion_friendly_attention,
    optimize_graph,
)
from shoal.exporter.quantize import FP32_MIN_COSINE  # noqa: E402


def io_signature(path):
    model = onnx.load(str(path))

    def rows(values):
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    return rows(model.graph.input), rows(model.graph.output)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-opset17", "dynamo-opset18"])
@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_tiny_encoder_ends_with_all_attention_fused_at_fp32_parity(family, dynamo, tmp_path):
    model = gs.tiny_encoder(family)
    raw = gs.export(model, tmp_path / "raw.onnx", gs.TINY_INPUTS, dynamo=dynamo)
    report = optimize_graph(
        raw, tmp_path / "opt.onnx", model_type=family, num_heads=gs.HEADS, hidden_size=gs.HIDDEN
    )

    assert report.attention_blocks == gs.LAYERS
    assert report.fused_attention == gs.LAYERS, report
    assert report.all_attention_fused
    assert report.fusions["SkipLayerNormalization"] > 0
    assert io_signature(tmp_path / "opt.onnx") == io_signature(raw)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "Attention" in ops and "Softmax" not in ops

    # Right and left padding, and a sequence length other than the export's.
    for left in (False, True):
        feed = gs.padded_feed(gs.TINY_INPUTS, batch=4, seq=19, vocab=gs.VOCAB, left=left)
        expected = gs.torch_hidden(model, feed)
        got = gs.run_onnx(tmp_path / "opt.onnx", feed)
        cosines = gs.token_cosines(got, expected, feed["attention_mask"])
        assert cosines.min() >= FP32_MIN_COSINE, (left, cosines.min())


def test_real_minilm_fuses_all_six_attention_blocks_at_fp32_parity():
    model, raw, optimized, report = gs.minilm()
    assert report.fused_attention == 6 == report.attention_blocks
    assert report.fusions.get("EmbedLayerNormalization") == 1
    assert io_signature(optimized) == io_signature(raw)

    feed = gs.minilm_feed()
    expected = gs.torch_hidden(model, feed)
    got = gs.run_onnx(optimized, feed)
    cosines = gs.token_cosines(got, expected, feed["attention_mask"])
    assert cosines.min() >= FP32_MIN_COSINE
    pooled = (
        gs.mean_pooled(got, feed["attention_mask"])
        * gs.mean_pooled(expected, feed["attention_mask"])
    ).sum(1)
    assert pooled.min() >= FP32_MIN_COSINE


def test_sdpa_export_reports_unfused_attention_and_how_to_fix_it(tmp_path):
    model = gs.tiny_encoder("bert")
    raw = gs.export(model, tmp_path / "raw.onnx", gs.TINY_INPUTS, dynamo=False, sdpa=True)
    report = optimize_graph(
        raw, tmp_path / "opt.onnx", model_type="bert", num_heads=4, hidden_size=32
    )
    assert report.fused_attention == 0
    assert not report.all_attention_fused
    assert "fusion_friendly_attention" in report.note
    # Still a valid graph at parity: the other fusions do not depend on attention.
    feed = gs.padded_feed(gs.TINY_INPUTS, batch=3, seq=10, vocab=gs.VOCAB)
    cosines = gs.token_cosines(
        gs.run_onnx(tmp_path / "opt.onnx", feed),
        gs.torch_hidden(model, feed),
        feed["attention_mask"],
    )
    assert cosines.min() >= FP32_MIN_COSINE


def test_unsupported_family_is_copied_unchanged_with_zero_fusions(tmp_path):
    raw = gs.export(gs.tiny_encoder("bert"), tmp_path / "raw.onnx", gs.TINY_INPUTS, dynamo=False)
    report = optimize_graph(
        raw, tmp_path / "out.onnx", model_type="modernbert", num_heads=4, hidden_size=32
    )
    assert report.optimizer_model_type is None
    assert report.fused_attention == 0 and report.fusions == {}
    assert "modernbert" in report.note and "xlm-roberta" in report.note
    assert onnx.load(str(tmp_path / "out.onnx")) == onnx.load(str(raw))
    onnx.checker.check_model(str(tmp_path / "out.onnx"))
    feed = gs.padded_feed(gs.TINY_INPUTS, batch=2, seq=8, vocab=gs.VOCAB)
    assert gs.run_onnx(tmp_path / "out.onnx", feed).shape == (2, 8, gs.HIDDEN)


def test_missing_input_graph_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        optimize_graph(
            tmp_path / "absent.onnx",
            tmp_path / "o.onnx",
            model_type="bert",
            num_heads=4,
            hidden_size=32,
        )


def test_fusion_friendly_attention_restores_the_implementation_even_on_error():
    model = gs.tiny_encoder("bert")
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"), fusion_friendly_attention(model):
        assert model.config._attn_implementation == "eager"
        raise RuntimeError("boom")
    assert model.config._attn_implementation == before


def test_fusion_friendly_attention_rejects_a_module_without_transformers_models():
    import torch

    with (
        pytest.raises(TypeError, match="PreTrainedModel"),
        fusion_friendly_attention(torch.nn.Linear(2, 2)),
    ):
        pass


def attention_like_graph(mask_nodes, mask_output: str) -> onnx.ModelProto:
    """Softmax(Add(Mul(MatMul(x, xᵀ), 0.5), mask)) with the given mask subgraph."""
    from onnx import TensorProto, helper

    nodes = [
        *mask_nodes,
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Mul", ["scores", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", mask_output], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "s", 4]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)],
        initializer=[
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("low", TensorProto.FLOAT, [], [-1e9]),
            helper.make_tensor("one_i", TensorProto.INT64, [], [1]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mask_rewrite_accepts_a_padding_mask_and_leaves_other_masks_alone():
    from onnx import helper

    def mask_from(compare_op: str):
        return [
            helper.make_node("Unsqueeze", ["attention_mask", "axes"], ["m4"]),
            helper.make_node(compare_op, ["m4", "one_i"], ["keep"]),
            helper.make_node("Where", ["keep", "zero", "low"], ["additive"]),
        ]

    padding = attention_like_graph(mask_from("Equal"), "additive")
    assert canonicalize_padding_mask(padding)
    assert any(n.name.startswith("shoal_padding_mask") for n in padding.graph.node)
    assert "additive" not in {i for n in padding.graph.node for i in n.input}

    # Masks the padded positions in reverse (keeps padding, hides tokens): not a padding mask.
    inverted = attention_like_graph(mask_from("Less"), "additive")
    before = inverted.SerializeToString()
    assert not canonicalize_padding_mask(inverted)
    assert inverted.SerializeToString() == before
