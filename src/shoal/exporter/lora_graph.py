"""PEFT LoRA adapters on one exported base graph (ONNX and onnxruntime side).

Who calls it: shoal.exporter.export. After `torch.onnx.export` of the base with LoRA slots
(shoal.exporter.lora), `open_slots` turns each slot's A and B into an overridable initializer:
a graph input whose default (an initializer of the same name) is zero, so the graph without an
adapter computes the base model. `write_adapter_file` writes one adapter's A and B as an
onnxruntime adapter file (`onnxruntime.AdapterFormat`), which the encode step loads with
`onnxruntime.LoraAdapter` and activates per run (`RunOptions.add_active_adapter`): onnxruntime
then feeds the adapter's tensors in place of the defaults. One session, one copy of the base
weights, any number of adapters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shoal.exporter.errors import ExportError

log = logging.getLogger(__name__)

ADAPTER_SUFFIX = ".onnx_adapter"


def _find_by_value(graph: Any, values: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each slot's initializer in `graph`, found by its export-time (random, distinct) value:
    the exporter names initializers as it likes."""
    from onnx import numpy_helper

    wanted = {name: value for name, value in values.items()}
    found: dict[str, Any] = {}
    for initializer in graph.initializer:
        shape = tuple(initializer.dims)
        for name, value in wanted.items():
            if name in found or value.shape != shape:
                continue
            if np.array_equal(numpy_helper.to_array(initializer), value):
                found[name] = initializer
                break
    return found


def open_slots(path: Path, values: dict[str, np.ndarray]) -> list[str]:
    """Rewrite the graph at `path` in place: each LoRA slot found becomes an overridable
    initializer named after the slot, zero by default, with a free rank dimension. Returns the
    slot names the graph uses (a module outside the graph's outputs, like BERT's pooler, has no
    slot in it)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    found = _find_by_value(graph, values)
    renames = {initializer.name: name for name, initializer in found.items()}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
    for name, initializer in found.items():
        rows, columns = initializer.dims
        zeros = np.zeros((rows, 1) if name.endswith(".A") else (1, columns), np.float32)
        initializer.CopyFrom(numpy_helper.from_array(zeros, name))
        shape = [rows, None] if name.endswith(".A") else [None, columns]
        graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    unused = sorted(set(values) - set(found))
    if unused:
        log.info("LoRA slots outside the graph's outputs (not exported): %s", unused)
    onnx.save(model, str(path))
    return sorted(found)


def check_slots(path: Path, slots: list[str]) -> None:
    """Every slot is still an overridable initializer after the optimizer ran."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    overridable = {i.name for i in graph.input} & {i.name for i in graph.initializer}
    lost = sorted(set(slots) - overridable)
    if lost:
        raise ExportError(
            f"graph optimization removed the LoRA slots {lost[:4]} of {path.name}; export with "
            "--no-optimize"
        )


def write_adapter_file(path: Path, tensors: dict[str, np.ndarray], slots: list[str]) -> int:
    """One adapter's slot tensors (those the graph uses) as an onnxruntime adapter file; returns
    its size in bytes."""
    import onnxruntime as ort

    kept = {name: tensor for name, tensor in tensors.items() if name in slots}
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(
        {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(t))
            for name, t in kept.items()
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    adapter.export_adapter(str(path))
    return path.stat().st_size


def load_adapter(path: Path, what: str) -> Any:
    """onnxruntime's LoraAdapter of `path`; ExportError names a file it cannot read."""
    import onnxruntime as ort

    adapter = ort.LoraAdapter()
    try:
        adapter.Load(str(path))
    except (RuntimeError, OSError) as exc:
        raise ExportError(f"{what}: {path} is not an onnxruntime adapter file ({exc})") from exc
    return adapter


class AdapterSession:
    """An onnxruntime session that runs with one adapter active (what the parity check needs:
    `get_inputs`, `get_outputs`, `run`)."""

    def __init__(self, session: Any, adapter_path: Path, what: str) -> None:
        import onnxruntime as ort

        self.session = session
        # RunOptions holds a bare pointer to the adapter: keep the adapter alive beside it.
        self.adapter = load_adapter(adapter_path, what)
        self.run_options = ort.RunOptions()
        self.run_options.add_active_adapter(self.adapter)

    def get_inputs(self) -> list[Any]:
        return self.session.get_inputs()

    def get_outputs(self) -> list[Any]:
        return self.session.get_outputs()

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(names, feed, self.run_options)
