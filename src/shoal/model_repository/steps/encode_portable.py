"""Triton python-backend model of the "portable" runtime: the entry's ONNX graph on onnxruntime.

shoal copies this file to `<model>__encode/1/model.py`, beside `model.onnx` and `step.json`. It has
no shoal imports: it runs inside Triton, which only provides numpy and onnxruntime (through the
environment Triton's python stub is given).

The dynamic batcher hands over several requests at once, each with its own sequence length (the
inputs are declared `allow_ragged_batch`). They are padded to the longest, on the model's padding
side, run in one onnxruntime call, and split back: rows per request, and per-token outputs (first
non-batch dimension variable) cut back to that request's own length.
Padding adds only masked positions, which the exported graphs ignore (verified on padded batches).
When the joined run fails, each request runs alone, so only the one the graph cannot run fails.
Tensors of the wrong shape (a client calling this step directly) are the client's mistake:
INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT); a graph that cannot run a request is INTERNAL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

STEP_CONFIG = "step.json"


class RequestError(ValueError):
    """What is wrong with the tensors of one request, said so that the caller can fix it."""


def error_response(exc: Exception):
    """INVALID_ARG (Triton answers 400 / INVALID_ARGUMENT) for a client's mistake, else INTERNAL."""
    mistake = isinstance(exc, RequestError)
    code = pb_utils.TritonError.INVALID_ARG if mistake else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), code))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        version_dir = Path(args["model_repository"]) / args["model_version"]
        settings = json.loads((version_dir / STEP_CONFIG).read_text())
        model_config = json.loads(args["model_config"])
        self.logger = pb_utils.Logger

        session_options = ort.SessionOptions()
        if settings.get("threads"):
            session_options.intra_op_num_threads = int(settings["threads"])
            session_options.inter_op_num_threads = 1
        providers: list = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device = int(args.get("model_instance_device_id", 0))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(
            str(version_dir / settings["onnx"]), session_options, providers=providers
        )
        self.left_padding = settings["padding_side"] == "left"
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = [i["name"] for i in model_config["input"]]
        missing = [n for n in self.input_names if n not in graph_inputs]
        if missing:
            raise ValueError(
                f"model.onnx has no inputs named {missing}; it has {sorted(graph_inputs)}"
            )
        self.input_dtypes = {
            i["name"]: pb_utils.triton_string_to_numpy(i["data_type"])
            for i in model_config["input"]
        }
        # Inputs of fixed dims (pixel values) are joined as they are: no padding.
        dims = {i["name"]: tuple(int(d) for d in i["dims"]) for i in model_config["input"]}
        fixed = all(-1 not in d for d in dims.values())
        self.fixed_dims = dims if fixed else {}
        self.outputs = [
            (
                o["name"],
                pb_utils.triton_string_to_numpy(o["data_type"]),
                # A variable first dimension is the sequence: cut back per request.
                bool(o["dims"]) and int(o["dims"][0]) == -1,
            )
            for o in model_config["output"]
        ]
        self.logger.log_info(
            f"{args['model_name']}: onnxruntime on {self.session.get_providers()[0]}"
        )

    def _read(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input {name!r} is missing")
            arrays[name] = tensor.as_numpy().astype(self.input_dtypes[name], copy=False)
        shapes = {a.shape for a in arrays.values()}
        if self.fixed_dims:  # image-text image entries: pixel values of the configured size
            wrong = {n: a.shape for n, a in arrays.items() if a.shape[1:] != self.fixed_dims[n]}
            if wrong:
                raise RequestError(f"inputs must be [batch, *{self.fixed_dims}], got {wrong}")
        elif len(shapes) != 1 or len(next(iter(shapes))) != 2:
            detail = {n: a.shape for n, a in arrays.items()}
            raise RequestError(f"inputs must all be [batch, tokens] of one shape, got {detail}")
        return arrays

    def _pad(self, array: np.ndarray, length: int) -> np.ndarray:
        missing = length - array.shape[1]
        if missing == 0 or self.fixed_dims:
            return array
        width = ((0, 0), (missing, 0)) if self.left_padding else ((0, 0), (0, missing))
        return np.pad(array, width)  # zeros: masked out by attention_mask

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batch: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            try:
                batch.append((index, self._read(request)))
            except Exception as exc:  # noqa: BLE001  one bad request must not fail the others
                responses[index] = error_response(exc)
        if not batch:
            return responses
        try:
            self._run(batch, responses)
        except Exception:  # noqa: BLE001  find the culprit: run each request alone
            for item in batch:
                try:
                    self._run([item], responses)
                except Exception as exc:  # noqa: BLE001
                    failure = RuntimeError(f"onnxruntime failed on this request: {exc}")
                    responses[item[0]] = error_response(failure)
        return responses

    def _run(self, batch: list[tuple[int, dict[str, np.ndarray]]], responses: list) -> None:
        length = max(arrays[self.input_names[0]].shape[1] for _, arrays in batch)
        feed = {
            name: np.concatenate([self._pad(arrays[name], length) for _, arrays in batch])
            for name in self.input_names
        }
        results = self.session.run([name for name, _, _ in self.outputs], feed)
        start = 0
        for index, arrays in batch:
            rows, own_length = arrays[self.input_names[0]].shape[:2]
            tensors = []
            for (name, dtype, per_token), result in zip(self.outputs, results, strict=True):
                part = result[start : start + rows]
                if per_token:
                    # The axis may be the sequence shifted by a constant (bge-m3's ColBERT
                    # vectors skip [CLS]: T - 1): keep the request's own share of it.
                    own = own_length + result.shape[1] - length
                    part = part[:, part.shape[1] - own :] if self.left_padding else part[:, :own]
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(part, dtype=dtype)))
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += rows
