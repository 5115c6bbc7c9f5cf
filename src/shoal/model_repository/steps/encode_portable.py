"""Triton python-backend model of the "portable" runtime: the entry's ONNX graph on onnxruntime.

shoal copies this file to `<model>__encode/1/model.py`, beside `model.onnx` and `step.json`. It has
no shoal imports: it runs inside Triton, which only provides numpy and onnxruntime (through the
environment Triton's python stub is given).

The dynamic batcher hands over several requests at once, each with its own sequence length (the
inputs are declared `allow_ragged_batch`), and a request's rows are padded to its longest text.
Padding is compute thrown away (a batch of short and long texts can be half padding), so the rows
of all requests are cut to their real length (without the trailing run of pad tokens that have
attention_mask 0: a ColBERT query's unattended [MASK] tokens stay), sorted by it and run in groups of
similar length: a new group starts when joining the next row would pad the group beyond
`length_slack` (its padded tokens over its real ones) and the group already holds
`min_group_tokens` (smaller runs lose more to per-run overhead than they save). On MiniLM with
mixed-length sentences, padded tokens per real token fell from 2.5 to 1.16 at 32 concurrent
requests and throughput rose 1.65x (benchmarks/triton_path.py). Results are put back per request
at the request's own width; the positions a request padded get zeros, which every postprocessing
masks out (as it masked the graph's outputs there before).
Padding adds only masked positions, which the exported graphs ignore (verified on padded batches).
When a run fails, each request runs alone, so only the one the graph cannot run fails.
Requests whose inputs are not all [batch, tokens] of one shape (GLiNER's words, spans and
labels) run request by request, as they came: their rows are not cut or joined.

onnxruntime's worker threads spin between runs by default, burning cores that the other steps and
Triton need on a CPU pool; `spinning: false` (EntryOptions' default) lets them sleep.
Counters on Triton's metrics port: `shoal_encode_real_tokens_total`,
`shoal_encode_padded_tokens_total` (tokens run, padding included) and
`shoal_encode_run_seconds_total` (time inside onnxruntime), per model.
Tensors of the wrong shape (a client calling this step directly) are the client's mistake:
INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT); a graph that cannot run a request is INTERNAL.

LoRA adapters (docs/lora.md): an entry exported with `--adapter` lists its adapter files in
step.json; each is loaded once (`onnxruntime.LoraAdapter`) beside the one session. The optional
ADAPTER input names each row's adapter (absent or "" = the base); the rows of a batch are grouped
by adapter (then by length), and each group runs with its adapter active
(`RunOptions.add_active_adapter`). A request naming an unknown adapter is refused alone, with the
list of adapters.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

STEP_CONFIG = "step.json"
IDS, MASK = "input_ids", "attention_mask"
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
        if not settings.get("spinning", True):
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # Defaults live in EntryOptions (written to step.json); absent: one run per batch.
        self.length_slack = float(settings.get("length_slack", -1))
        self.min_group_tokens = int(settings.get("min_group_tokens", 1))
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
        # Named axes of the graph's inputs: inputs sharing a name must agree on its size.
        self.axes = {name: list(graph_inputs[name].shape) for name in self.input_names}
        self.input_dtypes = {
            i["name"]: pb_utils.triton_string_to_numpy(i["data_type"])
            for i in model_config["input"]
            if i["name"] != ADAPTER_INPUT
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
        # Rows are cut to their real length only where padding is recognisable.
        pad_id = settings.get("pad_token_id")
        self.pad_id = None if pad_id is None or IDS not in self.input_names else int(pad_id)
        self.has_mask = MASK in self.input_names
        self.metrics = EncodeMetrics(args["model_name"])
        self.run_options = {BASE: None, **self._load_adapters(version_dir, settings)}
        adapters = sorted(self.run_options)[1:]
        self.logger.log_info(
            f"{args['model_name']}: onnxruntime on {self.session.get_providers()[0]}"
            + (f", LoRA adapters {adapters}" if adapters else "")
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
        if self.fixed_dims:  # image-text image entries: pixel values of the configured size
            wrong = {n: a.shape for n, a in arrays.items() if a.shape[1:] != self.fixed_dims[n]}
            if wrong:
                raise RequestError(f"inputs must be [batch, *{self.fixed_dims}], got {wrong}")
        else:
            sizes: dict[str, set[int]] = {}
            for name, array in arrays.items():
                for axis, size in zip(self.axes[name], array.shape, strict=False):
                    if isinstance(axis, str):
                        sizes.setdefault(axis, set()).add(size)
            if any(len(found) > 1 for found in sizes.values()):
                detail = {n: a.shape for n, a in arrays.items()}
                raise RequestError(
                    "inputs must agree on the graph's shared axes (token tensors: [batch, tokens] "
                    f"of one shape), got {detail}"
                )
        rows = arrays[self.input_names[0]].shape[0]
        arrays[ADAPTER_INPUT] = self._read_adapters(request, rows)
        return arrays

    def _token_tensors(self, arrays: dict[str, np.ndarray]) -> bool:
        """[batch, tokens] of one shape (or an image entry's pixels): rows can be cut to their
        length and joined."""
        if self.fixed_dims:
            return True
        shapes = {arrays[name].shape for name in self.input_names}
        return len(shapes) == 1 and len(next(iter(shapes))) == 2

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batch: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            try:
                batch.append((index, self._read(request)))
            except Exception as exc:  # noqa: BLE001  one bad request must not fail the others
                responses[index] = error_response(exc)
        whole = [item for item in batch if not self._token_tensors(item[1])]
        batch = [item for item in batch if self._token_tensors(item[1])]
        self._each(whole, responses, self._run_as_is)
        if batch:
            try:
                self._run(batch, responses)
            except Exception:  # noqa: BLE001  find the culprit: run each request alone
                self._each(batch, responses, lambda item, out: self._run([item], out))
        self.metrics.publish()
        return responses

    def _each(self, batch: list, responses: list, run) -> None:
        """`run(item, responses)` per request; a failure answers that request alone."""
        for item in batch:
            try:
                run(item, responses)
            except Exception as exc:  # noqa: BLE001
                failure = RuntimeError(f"onnxruntime failed on this request: {exc}")
                responses[item[0]] = error_response(failure)

    def _run_as_is(self, item: tuple[int, dict[str, np.ndarray]], responses: list) -> None:
        """One request's tensors as they came, its outputs as they are."""
        index, arrays = item
        feed = {name: arrays[name] for name in self.input_names}
        adapters = set(arrays[ADAPTER_INPUT])
        if len(adapters) > 1:
            raise RequestError(f"the rows of this request name different {ADAPTER_INPUT}s")
        started = time.perf_counter()
        results = self.session.run(
            [name for name, _, _ in self.outputs], feed, self.run_options[adapters.pop()]
        )
        real = int(feed[MASK].sum()) if self.has_mask else feed[self.input_names[0]].size
        self.metrics.add(time.perf_counter() - started, real, feed)
        responses[index] = pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(result, dtype=dtype))
                for (name, dtype, _), result in zip(self.outputs, results, strict=True)
            ]
        )

    def _run(self, batch: list[tuple[int, dict[str, np.ndarray]]], responses: list) -> None:
        rows = [
            (position, row, length)
            for position, (_, arrays) in enumerate(batch)
            for row, length in enumerate(self._real_lengths(arrays))
        ]
        rows.sort(key=lambda item: item[2])
        outputs: list[list] = [[None] * self._rows(arrays) for _, arrays in batch]
        shifts = [0] * len(self.outputs)
        for adapter, group in self._groups(batch, rows):
            width = max(1, group[-1][2])
            feed = {
                name: np.stack([self._cut(batch[p][1][name][r], width) for p, r, _ in group])
                for name in self.input_names
            }
            started = time.perf_counter()
            results = self.session.run(
                [name for name, _, _ in self.outputs], feed, self.run_options[adapter]
            )
            self.metrics.add(time.perf_counter() - started, sum(n for *_, n in group), feed)
            shifts = [
                result.shape[1] - width if per_token else 0
                for (_, _, per_token), result in zip(self.outputs, results, strict=True)
            ]
            for k, (position, row, length) in enumerate(group):
                outputs[position][row] = [
                    self._own_part(result[k], length, shift, per_token)
                    for (_, _, per_token), result, shift in zip(
                        self.outputs, results, shifts, strict=True
                    )
                ]
        for position, (index, arrays) in enumerate(batch):
            own_length = arrays[self.input_names[0]].shape[1]
            tensors = [
                pb_utils.Tensor(
                    name,
                    self._join(outputs[position], k, own_length, shifts[k], dtype, per_token),
                )
                for k, (name, dtype, per_token) in enumerate(self.outputs)
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _groups(self, batch: list, rows: list[tuple[int, int, int]]) -> list:
        """(adapter, rows) runs: the rows (sorted by length) of each adapter, in length groups."""
        named = {}
        for item in rows:
            position, row, _ = item
            named.setdefault(batch[position][1][ADAPTER_INPUT][row], []).append(item)
        return [
            (adapter, group)
            for adapter, adapter_rows in sorted(named.items())
            for group in length_groups(adapter_rows, self.length_slack, self.min_group_tokens)
        ]

    def _rows(self, arrays: dict[str, np.ndarray]) -> int:
        return arrays[self.input_names[0]].shape[0]

    def _real_lengths(self, arrays: dict[str, np.ndarray]) -> list[int]:
        """Tokens per row before the padding: the run of pad ids with attention_mask 0 at the
        row's padding side. Without a mask or a known pad id, the whole row."""
        rows, width = arrays[self.input_names[0]].shape[:2]
        if self.pad_id is None or not self.has_mask:  # (pixel values: every row is whole)
            return [width] * rows
        kept = (arrays[IDS] != self.pad_id) | (arrays[MASK] != 0)
        if not self.left_padding:
            kept = kept[:, ::-1]
        padding = np.where(kept.any(axis=1), np.argmax(kept, axis=1), width)
        return [int(n) for n in width - padding]

    def _cut(self, row: np.ndarray, width: int) -> np.ndarray:
        """One row cut or zero-padded to `width` on the padding side (padding is masked out)."""
        if row.shape[0] >= width:
            return row[row.shape[0] - width :] if self.left_padding else row[:width]
        pad = np.zeros(width - row.shape[0], dtype=row.dtype)
        return np.concatenate([pad, row] if self.left_padding else [row, pad])

    def _own_part(self, result: np.ndarray, length: int, shift: int, per_token: bool):
        """A row's output without its group's padding. A per-token axis may be the sequence
        shifted by a constant (bge-m3's ColBERT vectors skip [CLS]: T - 1)."""
        if not per_token:
            return result
        own = max(0, length + shift)
        return result[result.shape[0] - own :] if self.left_padding else result[:own]

    def _join(
        self, parts: list, k: int, own_length: int, shift: int, dtype, per_token: bool
    ) -> np.ndarray:
        """Output `k` of a request: its rows stacked, per-token ones at the request's own width
        (plus the output's shift), zeros where the request had padding."""
        rows = [row_outputs[k] for row_outputs in parts]
        if not per_token:
            return np.ascontiguousarray(np.stack(rows), dtype=dtype)
        width = max(0, own_length + shift)
        joined = np.zeros((len(rows), width, *rows[0].shape[1:]), dtype=dtype)
        for i, row in enumerate(rows):
            if self.left_padding:
                joined[i, width - row.shape[0] :] = row
            else:
                joined[i, : row.shape[0]] = row
        return joined


class EncodeMetrics:
    """Counters of tokens run and time in onnxruntime, added up per execute and sent to Triton
    once per execute (each metric update is a message to the Triton process)."""

    def __init__(self, model: str) -> None:
        self._values = {"real": 0.0, "padded": 0.0, "seconds": 0.0}
        self._metrics = None
        try:
            families = {
                "real": ("shoal_encode_real_tokens_total", "Tokens of the texts encoded"),
                "padded": (
                    "shoal_encode_padded_tokens_total",
                    "Tokens run through the graph, padding included",
                ),
                "seconds": (
                    "shoal_encode_run_seconds_total",
                    "Seconds spent inside onnxruntime runs",
                ),
            }
            self._families = {
                key: pb_utils.MetricFamily(name, text, pb_utils.MetricFamily.COUNTER)
                for key, (name, text) in families.items()
            }
            self._metrics = {
                key: family.Metric(labels={"model": model})
                for key, family in self._families.items()
            }
        except Exception as exc:  # noqa: BLE001  metrics off (--allow-metrics=false): serve anyway
            pb_utils.Logger.log_warn(f"{model}: no encode metrics ({exc})")

    def add(self, seconds: float, real_tokens: int, feed: dict[str, np.ndarray]) -> None:
        self._values["seconds"] += seconds
        self._values["real"] += real_tokens
        first = next(iter(feed.values()))
        self._values["padded"] += first.shape[0] * first.shape[1]

    def publish(self) -> None:
        if self._metrics is None:
            return
        for key, value in self._values.items():
            if value:
                self._metrics[key].increment(value)
            self._values[key] = 0.0


def length_groups(
    rows: list[tuple[int, int, int]], slack: float, min_group_tokens: int
) -> list[list[tuple[int, int, int]]]:
    """Rows (request position, row, real length), sorted by length, cut into runs: the next row
    opens a new group when the current one holds `min_group_tokens` padded tokens and taking the
    row would make the group's padded tokens exceed (1 + slack) times its real tokens. A
    negative slack keeps every row in one run."""
    if slack < 0:
        return [rows] if rows else []
    groups: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    real = 0
    for item in rows:
        length = max(1, item[2])
        if current:
            held = len(current) * max(1, current[-1][2])
            padded_after = (len(current) + 1) * length
            if held >= min_group_tokens and padded_after > (1 + slack) * (real + length):
                groups.append(current)
                current, real = [], 0
        current.append(item)
        real += length
    if current:
        groups.append(current)
    return groups
