"""Graph optimization of exported encoder graphs with onnxruntime's transformer optimizer, ending
with fused attention (com.microsoft `Attention`) for the BERT family.

Called by the exporter after `torch.onnx.export` and before parity verification; the manifest
records the `OptimizeReport` (how many attention blocks were fused).

How to export so that attention fuses (measured with torch 2.13, transformers 5.24,
onnxruntime 1.32; details and numbers in docs/optimization.md):

- Export inside `fusion_friendly_attention(model)`, which switches the model to transformers'
  eager attention for the duration of the export. The default `sdpa` implementation traces to a
  graph whose scaled-dot-product pattern the optimizer does not recognise (0 fused), which is what
  a plain transformers-5 export gives. Eager attention traces to MatMul(Q, Kᵀ) -> Mul(scale) ->
  Add(mask) -> Softmax -> MatMul(V), which onnxruntime 1.32 matches, including transformers 5's
  boolean-mask construction.
- Export with `dynamo=False` (TorchScript, opset 17: `RECOMMENDED_DYNAMO` / `RECOMMENDED_OPSET`;
  also fuses EmbedLayerNormalization) or `dynamo=True` (opset 18); both end fully fused. The
  dynamo exporter builds the 4D mask with GatherND instead of Gather/Reshape/Expand, which the
  optimizer's matcher misses; `optimize_graph` first rewrites that mask subgraph into the classic
  `(1 - mask) * min_float` form (see `canonicalize_padding_mask`) after checking numerically that
  both compute the same padding mask.

The optimized graph stays fp32 and CPU-friendly (no fp16 here, no provider-specific offline
optimization), keeps the graph's input and output names, dtypes and dynamic axes, and takes the
raw 2D attention mask (any padding side) rather than a 1D mask index (right padding only): on
MiniLM both ran at the same speed. Families the optimizer does not know (ModernBERT, Qwen) are
copied unchanged with a report of 0 fusions.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

logger = logging.getLogger(__name__)

# Export settings under which attention fuses (the exporter helper uses these).
RECOMMENDED_DYNAMO = False
RECOMMENDED_OPSET = 17
ATTENTION_IMPLEMENTATION_FOR_EXPORT = "eager"

# Hugging Face `config.model_type` -> onnxruntime optimizer `model_type`. Only families whose
# encoder layer is BERT's (self-attention with bias, post-LayerNorm, GELU) are listed; they are
# tested to end with every attention block fused.
OPTIMIZER_MODEL_TYPES: dict[str, str] = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
}

# The optimizer's counters for ops that replace a whole attention block.
_ATTENTION_OPS = ("Attention", "MultiHeadAttention")

# Beyond protobuf's 2 GiB limit a model must be saved with external data (XLM-R large, bge-m3).
_EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


@dataclass
class OptimizeReport:
    """What `optimize_graph` did to one graph; stored in the manifest."""

    model_type: str  # Hugging Face config.model_type as given
    optimizer_model_type: str | None  # onnxruntime optimizer model type; None: not optimized
    attention_blocks: int  # Softmax nodes in the input graph: one per attention block
    fused_attention: int  # attention blocks replaced by com.microsoft Attention/MultiHeadAttention
    fusions: dict[str, int] = field(default_factory=dict)  # fused op -> count (non-zero only)
    mask_canonicalized: bool = False  # the dynamo padding-mask rewrite was applied
    nodes_before: int = 0
    nodes_after: int = 0
    note: str = ""

    @property
    def all_attention_fused(self) -> bool:
        return self.attention_blocks > 0 and self.fused_attention == self.attention_blocks

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["all_attention_fused"] = self.all_attention_fused
        return data


class GraphInterfaceChangedError(RuntimeError):
    """The optimizer changed the graph's inputs or outputs; the optimized graph is not written."""


@contextmanager
def fusion_friendly_attention(model: Any) -> Iterator[Any]:
    """Switch every Hugging Face model inside `model` to eager attention while exporting.

    `model` may be a `PreTrainedModel` or any `torch.nn.Module` that holds some (an export
    wrapper). The previous attention implementation is restored on exit, even on error.
    """
    from transformers import PreTrainedModel

    hf_models = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    if not hf_models:
        raise TypeError(
            f"fusion_friendly_attention needs a transformers PreTrainedModel (or a module holding "
            f"one), got {type(model).__name__}"
        )
    previous = [(m, m.config._attn_implementation) for m in hf_models]
    try:
        for m in hf_models:
            m.set_attn_implementation(ATTENTION_IMPLEMENTATION_FOR_EXPORT)
        yield model
    finally:
        for m, implementation in reversed(previous):
            if implementation is not None:
                m.set_attn_implementation(implementation)


def optimize_graph(
    onnx_in: Path,
    onnx_out: Path,
    *,
    model_type: str,
    num_heads: int,
    hidden_size: int,
) -> OptimizeReport:
    """Optimize `onnx_in` into `onnx_out` (fp32) and report the fusions.

    `model_type` is the Hugging Face `config.model_type`. For families the optimizer does not
    support the graph is copied unchanged and the report says so (0 fusions).
    """
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not onnx_in.is_file():
        raise FileNotFoundError(f"ONNX graph to optimize not found: {onnx_in}")
    source = onnx.load(str(onnx_in))
    attention_blocks = sum(1 for n in source.graph.node if n.op_type == "Softmax")
    nodes_before = len(source.graph.node)

    optimizer_model_type = OPTIMIZER_MODEL_TYPES.get(model_type)
    if optimizer_model_type is None:
        note = (
            f"onnxruntime's transformer optimizer has no fusions for model_type {model_type!r} "
            f"(supported: {', '.join(sorted(OPTIMIZER_MODEL_TYPES))}); graph copied unchanged"
        )
        logger.info(note)
        if onnx_in.resolve() != onnx_out.resolve():
            save_graph(source, onnx_out)
        return OptimizeReport(
            model_type=model_type,
            optimizer_model_type=None,
            attention_blocks=attention_blocks,
            fused_attention=0,
            nodes_before=nodes_before,
            nodes_after=nodes_before,
            note=note,
        )

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from shoal.exporter.mask_rewrite import canonicalize_padding_mask

    mask_canonicalized = canonicalize_padding_mask(source)
    options = FusionOptions(optimizer_model_type)
    # A raw 2D mask is right for any padding side; the 1D mask index assumes right padding.
    options.use_raw_attention_mask(True)
    with tempfile.TemporaryDirectory(prefix="shoal-optimize-") as scratch:
        staged = Path(scratch) / "canonical.onnx"
        save_graph(source, staged)
        del source
        # opt_level=1: onnxruntime's basic, provider-independent rewrites (constant folding,
        # redundant nodes) run first, then the Python fusions.
        optimizer = optimize_model(
            str(staged),
            model_type=optimizer_model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=1,
            use_gpu=False,
        )
    optimized = optimizer.model

    _check_interface_unchanged(onnx.load(str(onnx_in), load_external_data=False), optimized)
    fusions = {op: n for op, n in optimizer.get_fused_operator_statistics().items() if n}
    fused_attention = sum(fusions.get(op, 0) for op in _ATTENTION_OPS)
    save_graph(optimized, onnx_out)

    report = OptimizeReport(
        model_type=model_type,
        optimizer_model_type=optimizer_model_type,
        attention_blocks=attention_blocks,
        fused_attention=fused_attention,
        fusions=fusions,
        mask_canonicalized=mask_canonicalized,
        nodes_before=nodes_before,
        nodes_after=len(optimized.graph.node),
    )
    if not report.all_attention_fused:
        report.note = (
            f"fused {fused_attention} of {attention_blocks} attention blocks; export with "
            f"fusion_friendly_attention(model) (eager attention) so that attention fuses"
        )
        logger.warning("%s: %s", onnx_in.name, report.note)
    logger.info("optimized %s: %s", onnx_in.name, fusions)
    return report


def _io_signature(model: onnx.ModelProto) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    def describe(values: Any) -> list[tuple[Any, ...]]:
        rows = []
        for value in values:
            tensor = value.type.tensor_type
            dims = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)
            rows.append((value.name, tensor.elem_type, dims))
        return rows

    return describe(model.graph.input), describe(model.graph.output)


def _check_interface_unchanged(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    inputs_before, outputs_before = _io_signature(before)
    inputs_after, outputs_after = _io_signature(after)
    if inputs_before != inputs_after or outputs_before != outputs_after:
        raise GraphInterfaceChangedError(
            "onnxruntime's optimizer changed the graph interface: "
            f"inputs {inputs_before} -> {inputs_after}, outputs {outputs_before} -> {outputs_after}"
        )


def save_graph(model: onnx.ModelProto, path: Path) -> bool:
    """Save a graph, with its weights as external data beyond protobuf's 2 GB limit.

    Returns True when external data (`<name>.data` beside the graph) was written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights <= _EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save(model, str(path))
        return False
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
    )
    return True


def copy_graph(onnx_in: Path, onnx_out: Path) -> None:
    """Copy a graph file (and its external data file, if any) unchanged."""
    shutil.copyfile(onnx_in, onnx_out)
    data = Path(str(onnx_in) + ".data")
    if data.is_file():
        shutil.copyfile(data, Path(str(onnx_out) + ".data"))
