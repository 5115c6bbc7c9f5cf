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

LoRA adapters (docs/lora.md): an entry exported with `--adapter` lists its adapter files in
step.json; each is loaded once (`onnxruntime.LoraAdapter`) beside the one session. The optional
ADAPTER input names each row's adapter (absent or "" = the base); the joined batch runs once per
adapter present in it, with that adapter active (`RunOptions.add_active_adapter`). A request
naming an unknown adapter is refused alone, with the list of adapters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

STEP_CONFIG = "step.json"
ADAPTER_INPUT = "ADAPTER"
BASE = ""  # the ADAPTER value of a row that runs the base model


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
        if settings.get("adapters"):
            # onnxruntime warns once per LoRA slot that an overridable initializer is not folded
            # (which is the point of a slot); errors are still logged.
            session_options.log_severity_level = 3
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
        self.input_names = [i["name"] for i in model_config["input"] if i["name"] != ADAPTER_INPUT]
        missing = [n for n in self.input_names if n not in graph_inputs]
        if missing:
            raise ValueError(
                f"model.onnx has no inputs named {missing}; it has {sorted(graph_inputs)}"
            )
        self.input_dtypes = {
            i["name"]: pb_utils.triton_string_to_numpy(i["data_type"])
            for i in model_config["input"]
            if i["name"] != ADAPTER_INPUT
        }
        self.outputs = [
            (
                o["name"],
                pb_utils.triton_string_to_numpy(o["data_type"]),
                # A variable first dimension is the sequence: cut back per request.
                bool(o["dims"]) and int(o["dims"][0]) == -1,
            )
            for o in model_config["output"]
        ]
        self.run_options = {BASE: None, **self._load_adapters(version_dir, settings)}
        self.logger.log_info(
            f"{args['model_name']}: onnxruntime on {self.session.get_providers()[0]}"
            f"{f', LoRA adapters {sorted(self.run_options)[1:]}' if len(self.run_options) > 1 else ''}"
        )

    def _load_adapters(self, version_dir: Path, settings: dict) -> dict:
        """RunOptions with each LoRA adapter of step.json active; a file onnxruntime cannot read
        fails the load with its name (Triton reports it as the model's load error)."""
        import onnxruntime as ort

        options = {}
        self.adapters: list = []
        for name, relative in sorted(settings.get("adapters", {}).items()):
            adapter = ort.LoraAdapter()
            try:
                adapter.Load(str(version_dir / relative))
            except (RuntimeError, OSError) as exc:
                raise ValueError(
                    f"LoRA adapter {name!r}: {relative} cannot be loaded ({exc}); re-export the "
                    "model with its --adapter"
                ) from exc
            run_options = ort.RunOptions()
            run_options.add_active_adapter(adapter)
            options[name] = run_options
            # RunOptions holds a bare pointer to the adapter: keep the adapter alive with it.
            self.adapters.append(adapter)
        return options

    def _read_adapters(self, request, rows: int) -> np.ndarray:
        """Each row's adapter name (BASE where the input is absent)."""
        tensor = pb_utils.get_input_tensor_by_name(request, ADAPTER_INPUT)
        if tensor is None:
            return np.full(rows, BASE, dtype=object)
        values = tensor.as_numpy().reshape(-1)
        if values.shape[0] != rows:
            raise RequestError(f"{ADAPTER_INPUT} has {values.shape[0]} rows, the texts {rows}")
        names = np.array(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values],
            dtype=object,
        )
        unknown = sorted(set(names) - set(self.run_options))
        if unknown:
            known = sorted(self.run_options)[1:]
            raise RequestError(
                f"unknown LoRA adapter {unknown[0]!r}; this model has "
                f"{', '.join(map(repr, known)) if known else 'no adapters'} (or send no "
                f"{ADAPTER_INPUT} for the base model)"
            )
        return names

    def _read(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input {name!r} is missing")
            arrays[name] = tensor.as_numpy().astype(self.input_dtypes[name], copy=False)
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            detail = {n: a.shape for n, a in arrays.items()}
            raise RequestError(f"inputs must all be [batch, tokens] of one shape, got {detail}")
        arrays[ADAPTER_INPUT] = self._read_adapters(request, next(iter(shapes))[0])
        return arrays

    def _pad(self, array: np.ndarray, length: int) -> np.ndarray:
        missing = length - array.shape[1]
        if missing == 0:
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
        adapters = np.concatenate([arrays[ADAPTER_INPUT] for _, arrays in batch])
        results = self._run_by_adapter(feed, adapters)
        start = 0
        for index, arrays in batch:
            rows, own_length = arrays[self.input_names[0]].shape
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

    def _run_by_adapter(self, feed: dict[str, np.ndarray], adapters: np.ndarray) -> list:
        """The outputs of every row, each computed with its own adapter: one run per adapter."""
        names = [name for name, _, _ in self.outputs]
        groups = sorted(set(adapters))
        if len(groups) == 1:
            return self.session.run(names, feed, self.run_options[groups[0]])
        results: list = [None] * len(names)
        for adapter in groups:
            rows = np.flatnonzero(adapters == adapter)
            part = self.session.run(
                names, {k: v[rows] for k, v in feed.items()}, self.run_options[adapter]
            )
            for position, value in enumerate(part):
                if results[position] is None:
                    results[position] = np.empty((len(adapters), *value.shape[1:]), value.dtype)
                results[position][rows] = value
        return results
