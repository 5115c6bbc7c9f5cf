"""The portable encode step without a Triton server: per-request error handling, length-aware runs
and its metrics. The step module runs against a minimal stand-in for
`triton_python_backend_utils` and a real onnxruntime graph."""

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


class _MetricFamily:
    """pb_utils.MetricFamily: records each increment, per metric name and labels."""

    COUNTER, GAUGE = "COUNTER", "GAUGE"
    increments: dict[tuple[str, str], list[float]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str]):  # noqa: N802  (Triton's name)
        key = (self.name, json.dumps(labels, sort_keys=True))
        record = _MetricFamily.increments.setdefault(key, [])
        return types.SimpleNamespace(increment=record.append)


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = _Error
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    module.triton_string_to_numpy = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32}.__getitem__
    module.Logger = types.SimpleNamespace(
        log_info=lambda message: None, log_warn=lambda message: None
    )
    module.MetricFamily = _MetricFamily
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


def _load_step(tmp_path: Path, monkeypatch, **settings):
    _MetricFamily.increments = {}
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(
        "shoal_test_encode_portable", STEP_SOURCES_DIR / "encode_portable.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    version = tmp_path / "1"
    version.mkdir()
    _embedding_graph(version / "model.onnx")
    step_settings = {
        "onnx": "model.onnx",
        "padding_side": "right",
        "pad_token_id": 0,
        "threads": 1,
        **settings,
    }
    (version / "step.json").write_text(json.dumps(step_settings))
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


@pytest.fixture
def step(tmp_path, monkeypatch):
    return _load_step(tmp_path, monkeypatch)


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


def padded_request(rows: list[list[int]], left: bool = False) -> dict[str, _Tensor]:
    """Rows of different lengths padded (id 0, mask 0) to the longest, as the tokenize step
    sends them."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, where], mask[i, where] = row, 1
    return {
        "input_ids": _Tensor("input_ids", ids),
        "attention_mask": _Tensor("attention_mask", mask),
    }


def expected_hidden(rows: list[list[int]], left: bool = False) -> np.ndarray:
    """The graph's output for each row at the request's width: table rows, zeros at padding."""
    table = np.arange(VOCAB * HIDDEN, dtype=np.float32).reshape(VOCAB, HIDDEN)
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width, HIDDEN), dtype=np.float32)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        out[i, where] = table[row]
    return out


@pytest.mark.parametrize("side", ["right", "left"])
def test_rows_run_in_length_groups_and_come_back_at_each_requests_width(
    tmp_path, monkeypatch, side
) -> None:
    left = side == "left"
    # min_group_tokens 1: every row whose joining would pad the group by > 25 % starts a new run
    model = _load_step(
        tmp_path, monkeypatch, padding_side=side, length_slack=0.25, min_group_tokens=1
    )
    mixed = [[1] * 9, [2], [3, 4, 5]]  # one request whose rows differ in length
    short = [[6, 7]]
    long = [[8] * 12, [9] * 11]
    answers = model.execute([padded_request(r, left) for r in (mixed, short, long)])
    for answer, rows in zip(answers, (mixed, short, long), strict=True):
        assert answer.error is None
        np.testing.assert_array_equal(
            answer.output_tensors[0].as_numpy(), expected_hidden(rows, left)
        )
    (real,) = _increments("shoal_encode_real_tokens_total")
    (padded,) = _increments("shoal_encode_padded_tokens_total")
    assert real == 9 + 1 + 3 + 2 + 12 + 11
    # runs: [1] [2 3] [9 11 12] -> 1 + 2*3 + 3*12 padded tokens, against 6*12 in one run
    assert padded == 1 + 2 * 3 + 3 * 12
    assert _increments("shoal_encode_run_seconds_total")[0] > 0


def test_negative_slack_runs_the_whole_batch_at_once(tmp_path, monkeypatch) -> None:
    model = _load_step(tmp_path, monkeypatch, length_slack=-1, min_group_tokens=1)
    rows = [[1] * 9, [2], [3, 4, 5]]
    (answer,) = model.execute([padded_request(rows)])
    np.testing.assert_array_equal(answer.output_tensors[0].as_numpy(), expected_hidden(rows))
    assert _increments("shoal_encode_padded_tokens_total") == [3 * 9]


def test_unattended_tokens_that_are_not_padding_are_kept(tmp_path, monkeypatch) -> None:
    """A ColBERT query's [MASK] augmentation tokens have attention_mask 0 but are not padding:
    their outputs are used, so the row is not cut before them."""
    model = _load_step(tmp_path, monkeypatch, length_slack=0.0, min_group_tokens=1)
    mask_token = 7
    ids = np.array([[1, 2, mask_token, mask_token, 0, 0], [3, 4, 5, 6, 8, 9]], dtype=np.int64)
    mask = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=np.int64)
    (answer,) = model.execute(
        [
            {
                "input_ids": _Tensor("input_ids", ids),
                "attention_mask": _Tensor("attention_mask", mask),
            }
        ]
    )
    assert answer.error is None and answer.output_tensors[0].as_numpy().shape == (2, 6, HIDDEN)
    assert _increments("shoal_encode_real_tokens_total") == [4 + 6]


def _increments(metric: str) -> list[float]:
    found = [v for (name, _), v in _MetricFamily.increments.items() if name == metric]
    _MetricFamily.increments = {k: v for k, v in _MetricFamily.increments.items() if k[0] != metric}
    return found[0] if found else []


@pytest.mark.parametrize(
    ("lengths", "slack", "min_tokens", "expected"),
    [
        ([], 0.25, 1, []),
        ([5, 5, 5], 0.0, 1, [[5, 5, 5]]),  # equal lengths never pad
        ([2, 10], 0.25, 1, [[2], [10]]),  # 2*10 padded against 12 real: split
        ([2, 10], 0.25, 64, [[2, 10]]),  # the group holds 2 < 64 tokens: too small to split
        ([8, 9, 10], 0.25, 1, [[8, 9, 10]]),  # 30 padded against 27 real: within 25 %
        ([1, 1, 1, 50], 0.25, 3, [[1, 1, 1], [50]]),
        ([3, 40, 41], -1.0, 1, [[3, 40, 41]]),  # grouping off
    ],
)
def test_length_groups(step, lengths, slack, min_tokens, expected) -> None:
    length_groups = type(step).execute.__globals__["length_groups"]  # the step module's own
    rows = [(0, i, n) for i, n in enumerate(lengths)]
    groups = length_groups(rows, slack, min_tokens)
    assert [[n for *_, n in group] for group in groups] == expected
