"""torch -> ONNX for an adapter's graph module, with dynamic batch and sequence axes.

TorchScript export (dynamo=False, opset 17 by default): it exports every family here, fast on
small CPUs, and its graphs are the ones onnxruntime's optimizer fuses attention in (optimize.py).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.exporter.errors import ExportError
from shoal.postprocessing import (
    GRAPH_COLBERT_VECTORS,
    GRAPH_EMBEDDINGS,
    GRAPH_HIDDEN_STATES,
    GRAPH_LOGITS,
    GRAPH_SPARSE_WEIGHTS,
    GRAPH_TOKEN_LOGITS,
    GRAPH_TOKEN_VECTORS,
    GRAPH_TOKEN_WEIGHTS,
)

log = logging.getLogger(__name__)

OUTPUT_AXES: dict[str, dict[int, str]] = {
    GRAPH_HIDDEN_STATES: {0: "batch", 1: "sequence"},
    GRAPH_LOGITS: {0: "batch"},
    GRAPH_TOKEN_VECTORS: {0: "batch", 1: "sequence"},
    GRAPH_SPARSE_WEIGHTS: {0: "batch"},
    GRAPH_TOKEN_WEIGHTS: {0: "batch", 1: "sequence"},
    GRAPH_COLBERT_VECTORS: {0: "batch", 1: "sequence_after_first"},
    GRAPH_TOKEN_LOGITS: {0: "batch", 1: "sequence"},
    GRAPH_EMBEDDINGS: {0: "batch"},
}


def export_graph(
    module: torch.nn.Module,
    input_names: list[str],
    output_names: tuple[str, ...],
    sample: dict[str, np.ndarray],
    path: Path,
    opset: int,
    axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Trace `module` on `sample` (a padded batch, so the mask path is traced) into `path`.
    `axes`: dynamic axes per input, and per output where OUTPUT_AXES has none (default:
    batch x sequence)."""
    args = tuple(torch.from_numpy(sample[name]) for name in input_names)
    dynamic_axes = axes or {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic_axes = dict(dynamic_axes)
    dynamic_axes.update({n: OUTPUT_AXES[n] for n in output_names if n not in dynamic_axes})
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=input_names,
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many kinds; say which model and opset
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {exc}") from exc
    log.info("exported %s (opset %d)", path.name, opset)


def graph_io(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, Triton dtype) of the graph's inputs and outputs, as stored."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {
        onnx.TensorProto.FLOAT: "FP32",
        onnx.TensorProto.FLOAT16: "FP16",
        onnx.TensorProto.INT64: "INT64",
        onnx.TensorProto.INT32: "INT32",
        onnx.TensorProto.BOOL: "BOOL",
    }

    def describe(values: Any) -> list[tuple[str, str]]:
        return [(v.name, names.get(v.type.tensor_type.elem_type, "FP32")) for v in values]

    # An input with an initializer of its name is overridable (a LoRA slot): not fed by Triton.
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return describe(inputs), describe(model.graph.output)
