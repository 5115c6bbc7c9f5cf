"""The portable encode step's per-request error handling, without a Triton server: the step module
runs against a minimal stand-in for `triton_python_backend_utils` and a real onnxruntime graph."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from shoal.model_repository.entry import STEP_SOURCES_DIR

VOCAB, HIDDEN = 10, 4


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors=None, error=None) -> None:
        self.output_tensors, self.error = output_tensors or [], error


class _Error(str):
    """pb_utils.TritonError: the message, and the code Triton answers with."""

    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __new__(cls, message: str, code: str = INTERNAL) -> _Error:
        error = super().__new__(cls, message)
        error.code = code
        return error


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = _Error
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    module.triton_string_to_numpy = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32}.__getitem__
    module.Logger = types.SimpleNamespace(log_info=lambda message: None)
    return module


def _embedding_graph(path: Path) -> None:
    """input_ids, attention_mask -> hidden_states = table[input_ids]: an id past the vocabulary
    makes onnxruntime's Gather fail, like a request the graph cannot run."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    table = np.arange(VOCAB * HIDDEN, dtype=np.float32).reshape(VOCAB, HIDDEN)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["gathered"]),
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "axis"], ["mask_3d"]),
            helper.make_node("Mul", ["gathered", "mask_3d"], ["hidden_states"]),
        ],
        "embedding",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"]),
        ],
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["B", "T", HIDDEN])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture
def step(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(
        "shoal_test_encode_portable", STEP_SOURCES_DIR / "encode_portable.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    version = tmp_path / "1"
    version.mkdir()
    _embedding_graph(version / "model.onnx")
    (version / "step.json").write_text(
        json.dumps({"onnx": "model.onnx", "padding_side": "right", "threads": 1})
    )
    tensor = {"data_type": "TYPE_INT64", "dims": ["-1"]}
    config = {
        "input": [{"name": "input_ids", **tensor}, {"name": "attention_mask", **tensor}],
        "output": [{"name": "hidden_states", "data_type": "TYPE_FP32", "dims": ["-1", "4"]}],
    }
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_config": json.dumps(config),
            "model_name": "m__encode",
        }
    )
    return model


def request(ids: list[list[int]]) -> dict[str, _Tensor]:
    input_ids = np.asarray(ids, dtype=np.int64)
    return {
        "input_ids": _Tensor("input_ids", input_ids),
        "attention_mask": _Tensor("attention_mask", np.ones_like(input_ids)),
    }


def test_requests_of_different_lengths_share_a_run_and_are_split_back(step) -> None:
    short, long = step.execute([request([[1, 2]]), request([[3, 4, 5], [6, 7, 8]])])
    assert short.error is None and long.error is None
    assert short.output_tensors[0].as_numpy().shape == (1, 2, HIDDEN)
    assert long.output_tensors[0].as_numpy().shape == (2, 3, HIDDEN)
    np.testing.assert_array_equal(short.output_tensors[0].as_numpy()[0, 1], [8, 9, 10, 11])


def test_a_request_the_graph_cannot_run_fails_alone(step) -> None:
    good, bad, also_good = step.execute(
        [request([[1, 2]]), request([[1, VOCAB + 5]]), request([[3, 4, 5]])]
    )
    assert bad.error is not None and "onnxruntime" in bad.error
    assert bad.error.code == "INTERNAL"  # the graph's failure, not a client's mistake
    assert good.error is None and also_good.error is None
    np.testing.assert_array_equal(good.output_tensors[0].as_numpy()[0, 0], [4, 5, 6, 7])
    assert also_good.output_tensors[0].as_numpy().shape == (1, 3, HIDDEN)


def test_tensors_of_different_shapes_are_the_clients_mistake(step) -> None:
    bad = request([[1, 2]])
    bad["attention_mask"] = _Tensor("attention_mask", np.ones((1, 3), dtype=np.int64))
    refused, good = step.execute([bad, request([[3, 4]])])
    assert refused.error.code == "INVALID_ARG"
    assert "[batch, tokens] of one shape" in refused.error
    assert good.error is None
