"""int8 and fp16 variants of the optimized MiniLM graph: parity thresholds and graph interface."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.exporter import graph_support as gs

pytest.importorskip("torch", reason="needs the `export` extra")
pytest.importorskip("onnxruntime.quantization", reason="needs the `export` extra")

from shoal.exporter import quantize  # noqa: E402
from shoal.exporter.optimize import optimize_graph  # noqa: E402
from shoal.exporter.parity import THRESHOLDS  # noqa: E402
from shoal.exporter.quantize import (  # noqa: E402
    FP16_MIN_COSINE,
    INT8_MIN_COSINE,
    convert_fp16,
    quantize_int8,
)


def pooled_min_cosine(model, graph) -> float:
    feed = gs.minilm_feed()
    expected = gs.mean_pooled(gs.torch_hidden(model, feed), feed["attention_mask"])
    got = gs.mean_pooled(gs.run_onnx(graph, feed), feed["attention_mask"])
    return float((got * expected).sum(1).min())


def io_types(path):
    model = onnx.load(str(path))
    return [
        (v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)
    ]


def test_int8_threshold_is_the_exporters():
    assert INT8_MIN_COSINE == THRESHOLDS["int8"].min_cosine == 0.99


def test_int8_minilm_meets_the_stated_threshold(tmp_path):
    model, _, optimized, _ = gs.minilm()
    quantize_int8(optimized, tmp_path / "int8.onnx")
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # Quantized: the 6 QKV projections (QAttention) and the 6 FFN up-projections, each behind a
    # smoothing Mul, and the 6 FFN down-projections with their outlier channels split off; fp32:
    # the 6 attention-output projections and the 6 side branches (2 MatMuls and a BiasGelu each).
    assert ops.count("QAttention") == 6 and "Attention" not in ops
    assert ops.count("MatMul") == 6 + 2 * 6
    assert ops.count("BiasGelu") == 6 + 6
    assert sum(n.name.endswith("_smoothing") for n in graph.node) == 12
    assert sum(n.name.endswith("_outlier_add") for n in graph.node) == 6
    side = {t.name: t for t in graph.initializer if "_outlier_" in t.name}
    assert {tuple(t.dims) for n, t in side.items() if n.endswith("_down_weight")} == {
        (quantize.OUTLIER_CHANNELS, 384)
    }
    assert io_types(tmp_path / "int8.onnx") == io_types(optimized)
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(len(t.dims) == 2 for t in weights) == 18  # (the others: zero points)
    assert pooled_min_cosine(model, tmp_path / "int8.onnx") >= INT8_MIN_COSINE


def test_smoothing_is_exact_in_fp32(tmp_path):
    """The smoothing rewrite alone (no quantization) computes the same function."""
    model = gs.tiny_encoder("bert")
    raw = gs.export(model, tmp_path / "raw.onnx", gs.TINY_INPUTS, dynamo=False)
    optimized = tmp_path / "optimized.onnx"
    optimize_graph(raw, optimized, model_type="bert", num_heads=gs.HEADS, hidden_size=gs.HIDDEN)
    graph = onnx.load(str(optimized))
    targets = quantize._layer_norm_fed_projections(graph)
    assert [n.op_type for n in targets].count("Attention") == gs.LAYERS
    assert len(targets) == 2 * gs.LAYERS
    feeds = quantize._synthetic_calibration(graph)
    assert feeds and feeds[0]["input_ids"].max() < gs.VOCAB
    maxima = quantize._activation_maxima(
        optimized, [n.input[0] for n in targets], feeds, str(tmp_path)
    )
    quantize._smooth(graph, targets, maxima, quantize.SMOOTHING_ALPHA)
    onnx.save(graph, str(tmp_path / "smoothed.onnx"))
    feed = gs.padded_feed(gs.TINY_INPUTS, batch=3, seq=10, vocab=gs.VOCAB, seed=1)
    expected = gs.run_onnx(optimized, feed)
    got = gs.run_onnx(tmp_path / "smoothed.onnx", feed)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_outlier_split_is_exact_in_fp32_and_removes_the_channels_from_the_int8_path(tmp_path):
    """The split rewrite alone (no quantization) computes the same function, and the int8 path's
    down-projection input is zero on the split-off channels."""
    model = gs.tiny_encoder("bert")
    raw = gs.export(model, tmp_path / "raw.onnx", gs.TINY_INPUTS, dynamo=False)
    optimized = tmp_path / "optimized.onnx"
    optimize_graph(raw, optimized, model_type="bert", num_heads=gs.HEADS, hidden_size=gs.HIDDEN)
    graph = onnx.load(str(optimized))
    ffns = quantize._fused_ffns(graph, quantize._layer_norm_fed_projections(graph))
    assert len(ffns) == gs.LAYERS
    feeds = quantize._synthetic_calibration(graph)
    downs = [ffn.down.input[0] for ffn in ffns]
    maxima = quantize._activation_maxima(optimized, downs, feeds, str(tmp_path))
    quantize._split_outlier_channels(graph, ffns, maxima, 4)
    for name in downs:  # expose the int8 path's down-projection inputs
        graph.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(graph, str(tmp_path / "split.onnx"))
    feed = gs.padded_feed(gs.TINY_INPUTS, batch=3, seq=10, vocab=gs.VOCAB, seed=1)
    expected = gs.run_onnx(optimized, feed)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "split.onnx"), providers=["CPUExecutionProvider"])
    got, *inputs = session.run(None, feed)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    for name, value in zip(downs, inputs, strict=True):
        outliers = np.argsort(-maxima[name], kind="stable")[:4]
        assert np.abs(value[..., outliers]).max() == 0
        assert np.abs(value).max() > 0


def test_graph_without_layer_norms_quantizes_every_projection(tmp_path, caplog):
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="projection")],
        "plain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(weight, "w")],
    )
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain.ir_version = 8
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    quantize_int8(tmp_path / "plain.onnx", tmp_path / "int8.onnx")
    assert "no LayerNorm-fed projections" in caplog.text
    assert "not smoothing" in caplog.text  # input "x" is no token input: no synthetic feed
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "MatMul" not in ops and ops & {"DynamicQuantizeMatMul", "MatMulInteger"}
    x = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    got, expected = gs.run_onnx(tmp_path / "int8.onnx", {"x": x}), x @ weight
    cosines = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert cosines.min() > 0.99


def test_fp16_minilm_keeps_fp32_io_runs_on_cpu_and_meets_the_threshold(tmp_path):
    model, _, optimized, _ = gs.minilm()
    convert_fp16(optimized, tmp_path / "fp16.onnx")
    assert io_types(tmp_path / "fp16.onnx") == io_types(optimized)
    weights = onnx.load(str(tmp_path / "fp16.onnx")).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert pooled_min_cosine(model, tmp_path / "fp16.onnx") >= FP16_MIN_COSINE


def test_converting_an_already_converted_graph_is_refused(tmp_path):
    _, _, optimized, _ = gs.minilm()
    quantize_int8(optimized, tmp_path / "int8.onnx")
    with pytest.raises(ValueError, match="already converted"):
        quantize_int8(tmp_path / "int8.onnx", tmp_path / "again.onnx")
    with pytest.raises(ValueError, match="already converted"):
        convert_fp16(tmp_path / "int8.onnx", tmp_path / "fp16.onnx")
    assert not (tmp_path / "again.onnx").exists() and not (tmp_path / "fp16.onnx").exists()


def test_missing_graph_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        quantize_int8(tmp_path / "nowhere.onnx", tmp_path / "out.onnx")
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        convert_fp16(tmp_path / "nowhere.onnx", tmp_path / "out.onnx")
