"""int8 and fp16 variants of the optimized MiniLM graph: parity thresholds and graph interface."""

from __future__ import annotations

import onnx
import pytest

from tests.exporter import graph_support as gs

pytest.importorskip("torch", reason="needs the `export` extra")
pytest.importorskip("onnxruntime.quantization", reason="needs the `export` extra")

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


def test_int8_minilm_meets_the_stated_threshold(tmp_path):
    model, _, optimized, _ = gs.minilm()
    quantize_int8(optimized, tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QAttention", "DynamicQuantizeMatMul"} & ops or "MatMulInteger" in ops
    assert io_types(tmp_path / "int8.onnx") == io_types(optimized)
    # Projection weights are int8; the word embeddings stay fp32 (Gather is not quantized).
    weights = onnx.load(str(tmp_path / "int8.onnx")).graph.initializer
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in weights) >= 6 * 4
    assert pooled_min_cosine(model, tmp_path / "int8.onnx") >= INT8_MIN_COSINE


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
