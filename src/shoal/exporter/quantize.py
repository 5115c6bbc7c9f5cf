"""Reduced-precision variants of an optimized encoder graph: int8 (dynamic quantization, for CPU
pools) and fp16 (for GPU pools).

Called by the exporter after `optimize.optimize_graph`; the parity check (parity.py) then compares
the result with the PyTorch fp32 reference at `parity.THRESHOLDS`, the one place the thresholds
live (re-exported below as *_MIN_COSINE).

int8 recipe (measured on all-MiniLM-L6-v2 vs PyTorch fp32: 32 natural sentences padded to 128
tokens, and the exporter's probe texts incl. an empty string and an over-long text; table in
docs/optimization.md):
- Selective: only the projections that read a LayerNorm output are quantized, i.e. the fused
  Attention's QKV projection and the FFN up-projection (~58% of a BERT layer's projection FLOPs).
  (The FFN down-projection is handled below; the attention output projection stays fp32.)
- SmoothQuant (alpha 0.5) on the quantized projections: a per-input-channel Mul in front of each
  (x / s) with s folded into its weights (W * s), s = sqrt(max|x_j| / max|W_j|) calibrated on a
  small batch, which moves LayerNorm-output outlier channels into the weights. Exact in fp32; the
  minimum cosine of an FFN up-projection alone went 0.995 -> 0.9994.
- Weights signed int8 per output channel; activations uint8 per tensor at run time (onnxruntime's
  dynamic quantization). No reduce_range (it lowered accuracy; the kernels are exact here).
- FFN down-projections (read GELU output, whose few huge channels wreck the per-tensor activation
  scale; smoothing does not help): int8 with an LLM.int8()-style outlier split. The
  `OUTLIER_CHANNELS` intermediate channels with the largest calibrated |activation| are computed
  in fp32 by a side branch (their up-projection columns, BiasGelu, their down-projection rows) and
  zeroed in the int8 path (up-projection columns and bias, down-projection rows), so the int8
  down-projection never sees them; an Add joins the two. Exact in fp32. Only the fused pattern
  (MatMul -> BiasGelu -> MatMul) is split; other graphs keep their down-projections fp32.
Result: minimum cosine 0.992 (sentences) / 0.993 (probes), at ~0.95x the speed of quantizing every
projection (which reached only 0.97-0.98). The attention output projection stays fp32.

Calibration: by default a synthetic batch built from the graph (random token ids within the word
embedding's vocabulary, rows of 64, 40, 16 and 2 tokens); random and natural texts gave the same
accuracy on MiniLM. Callers with a tokenizer may pass real feeds.

fp16 uses onnxruntime's float16 converter with `keep_io_types`, so the graph still takes int64
ids/mask and returns fp32; the fused com.microsoft ops have fp16 CPU kernels in onnxruntime 1.32,
so the parity check runs on CPU too.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shoal.contract import Dtype
from shoal.exporter.optimize import save_graph
from shoal.exporter.parity import THRESHOLDS

logger = logging.getLogger(__name__)

# Parity thresholds (min cosine vs the PyTorch fp32 reference): parity.THRESHOLDS is the source.
FP32_MIN_COSINE = THRESHOLDS[Dtype.FP32.value].min_cosine
FP16_MIN_COSINE = THRESHOLDS[Dtype.FP16.value].min_cosine
INT8_MIN_COSINE = THRESHOLDS[Dtype.INT8.value].min_cosine

INT8_OP_TYPES = ("MatMul", "Attention")
SMOOTHING_ALPHA = 0.5
# Intermediate channels per FFN kept in fp32 (of 1536 on MiniLM; 8-32 measured alike).
OUTLIER_CHANNELS = 16
_GELU_OPS = {"BiasGelu"}
# Producers whose output makes a projection worth quantizing (outliers tamed by smoothing).
_LAYER_NORM_OPS = {
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
}
_CALIBRATION_LENGTHS = (64, 40, 16, 2)
_SCALE_LIMITS = (1e-3, 1e3)

Feed = Mapping[str, np.ndarray]


def quantize_int8(
    onnx_in: Path, onnx_out: Path, *, calibration: Sequence[Feed] | None = None
) -> None:
    """Dynamic int8 quantization of `onnx_in` (an fp32 graph, fused or not) into `onnx_out`.

    `calibration`: feeds (graph input name -> array) for the smoothing scales; by default a
    synthetic batch derived from the graph.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    _require_fp32_graph(onnx_in)
    model = onnx.load(str(onnx_in))
    targets = _layer_norm_fed_projections(model)
    if not targets:
        # Graphs without recognisable LayerNorm producers: quantize every projection (accuracy
        # is then for the parity check to judge).
        logger.warning("%s: no LayerNorm-fed projections; quantizing all of them", onnx_in.name)
        targets = [n for n in model.graph.node if _is_projection(n, _initializers(model))]
    feeds = list(calibration) if calibration is not None else _synthetic_calibration(model)
    ffns = _fused_ffns(model, targets) if feeds else []
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoal-int8-", dir=onnx_out.parent) as scratch:
        smoothed = Path(scratch) / "smoothed.onnx"
        if feeds:
            names = [n.input[0] for n in targets] + [ffn.down.input[0] for ffn in ffns]
            maxima = _activation_maxima(onnx_in, names, feeds, scratch)
            # Split first: the fp32 side branch reads the LayerNorm output before smoothing.
            _split_outlier_channels(model, ffns, maxima, OUTLIER_CHANNELS)
            _smooth(model, targets, maxima, SMOOTHING_ALPHA)
            targets = [*targets, *(ffn.down for ffn in ffns)]
        else:
            logger.warning("%s: no calibration feed could be built; not smoothing", onnx_in.name)
        large = save_graph(model, smoothed)
        del model
        staged = Path(scratch) / onnx_out.name
        quantize_dynamic(
            smoothed,
            staged,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            op_types_to_quantize=list(INT8_OP_TYPES),
            nodes_to_quantize=[n.name for n in targets],
            use_external_data_format=large,
            # Shape inference cannot type the outputs of com.microsoft ops (fused graphs): they
            # are all float here.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        staged.replace(onnx_out)
        data = Path(str(staged) + ".data")
        if data.is_file():
            data.replace(Path(str(onnx_out) + ".data"))
    logger.info(
        "quantized %d projections of %s to int8 (smoothed: %s, outlier-split FFNs: %d) -> %s",
        len(targets),
        onnx_in.name,
        bool(feeds),
        len(ffns),
        onnx_out,
    )


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _is_projection(node: onnx.NodeProto, initializers: Mapping[str, onnx.TensorProto]) -> bool:
    """MatMul/Attention with a constant 2D weight as second input."""
    if node.op_type not in INT8_OP_TYPES or len(node.input) < 2:
        return False
    weight = initializers.get(node.input[1])
    return weight is not None and len(weight.dims) == 2


def _layer_norm_fed_projections(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    initializers = _initializers(model)
    normalized = {
        n.output[0] for n in model.graph.node if n.op_type in _LAYER_NORM_OPS and n.output
    }
    return [
        n for n in model.graph.node if _is_projection(n, initializers) and n.input[0] in normalized
    ]


@dataclass(frozen=True)
class FusedFfn:
    """up (MatMul, LayerNorm-fed) -> gelu (BiasGelu with a constant bias) -> down (MatMul)."""

    up: onnx.NodeProto
    gelu: onnx.NodeProto
    down: onnx.NodeProto


def _fused_ffns(model: onnx.ModelProto, targets: Sequence[onnx.NodeProto]) -> list[FusedFfn]:
    initializers = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    ups = {id(n) for n in targets if n.op_type == "MatMul"}
    ffns = []
    for down in model.graph.node:
        if down.op_type != "MatMul" or not _is_projection(down, initializers):
            continue
        gelu = producer.get(down.input[0])
        if gelu is None or gelu.op_type not in _GELU_OPS or gelu.input[1] not in initializers:
            continue
        up = producer.get(gelu.input[0])
        # Sole readers only: zeroing channels must not change what anything else sees.
        if up is None or id(up) not in ups or readers[down.input[0]] != 1:
            continue
        if readers[gelu.input[0]] != 1:
            continue
        ffns.append(FusedFfn(up, gelu, down))
    return ffns


def _split_outlier_channels(
    model: onnx.ModelProto,
    ffns: Sequence[FusedFfn],
    maxima: Mapping[str, np.ndarray],
    channels: int,
) -> None:
    """In place, per FFN: the `channels` intermediate channels with the largest |activation| move
    to an fp32 side branch (exact in fp32: the int8 path gets zeros there, gelu(0) = 0)."""
    initializers = _initializers(model)
    position = {id(n): i for i, n in enumerate(model.graph.node)}
    inserts: list[tuple[int, list[onnx.NodeProto], onnx.NodeProto]] = []
    replaced: set[str] = set()
    for ffn in ffns:
        up_w = numpy_helper.to_array(initializers[ffn.up.input[1]]).copy()
        bias = numpy_helper.to_array(initializers[ffn.gelu.input[1]]).copy()
        down_w = numpy_helper.to_array(initializers[ffn.down.input[1]]).copy()
        width = min(channels, down_w.shape[0])
        outliers = np.sort(np.argsort(-maxima[ffn.down.input[0]], kind="stable")[:width])
        prefix = f"{ffn.down.name}_outlier"
        side = {
            f"{prefix}_up_weight": up_w[:, outliers],
            f"{prefix}_bias": bias[outliers],
            f"{prefix}_down_weight": down_w[outliers],
        }
        up_w[:, outliers], bias[outliers], down_w[outliers] = 0.0, 0.0, 0.0
        # New names for the zeroed weights: an initializer may be shared (e.g. equal biases).
        for role, node, value in (
            ("up", ffn.up, up_w),
            ("bias", ffn.gelu, bias),
            ("down", ffn.down, down_w),
        ):
            replaced.add(node.input[1])
            node.input[1] = f"{prefix}_int8_path_{role}"
            side[node.input[1]] = value
        model.graph.initializer.extend(
            numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in side.items()
        )
        branch = [
            helper.make_node(
                "MatMul",
                [ffn.up.input[0], f"{prefix}_up_weight"],
                [f"{prefix}_pre_gelu"],
                name=f"{prefix}_up",
            ),
            helper.make_node(
                ffn.gelu.op_type,
                [f"{prefix}_pre_gelu", f"{prefix}_bias"],
                [f"{prefix}_gelu"],
                name=f"{prefix}_gelu",
                domain=ffn.gelu.domain,
            ),
            helper.make_node(
                "MatMul",
                [f"{prefix}_gelu", f"{prefix}_down_weight"],
                [f"{prefix}_down"],
                name=f"{prefix}_down",
            ),
        ]
        joined = ffn.down.output[0]
        ffn.down.output[0] = f"{prefix}_int8_part"
        add = helper.make_node(
            "Add", [ffn.down.output[0], f"{prefix}_down"], [joined], name=f"{prefix}_add"
        )
        inserts.append((position[id(ffn.down)], branch, add))
    for index, branch, add in sorted(inserts, key=lambda item: item[0], reverse=True):
        model.graph.node.insert(index + 1, add)
        for node in reversed(branch):
            model.graph.node.insert(index, node)
    used = {name for node in model.graph.node for name in node.input}
    used.update(o.name for o in model.graph.output)
    unused = [t for t in model.graph.initializer if t.name in replaced - used]
    for tensor in unused:
        model.graph.initializer.remove(tensor)


def _synthetic_calibration(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Random token ids in the vocabulary, right-padded rows; [] if the inputs are unknown."""
    initializers = _initializers(model)
    # Follow the ids through Casts (the optimizer casts them to int32) to the embedding lookups;
    # the vocabulary is the largest table there (positions and segments are smaller).
    ids_names, tables = {"input_ids"}, []
    for node in model.graph.node:
        if not ids_names & set(node.input):
            continue
        if node.op_type == "Cast":
            ids_names.update(node.output)
        tables += [initializers[i] for i in node.input if i in initializers]
    vocab = max((int(t.dims[0]) for t in tables if len(t.dims) == 2), default=None)
    if vocab is None:
        return []
    rng = np.random.default_rng(0)
    rows, width = len(_CALIBRATION_LENGTHS), max(_CALIBRATION_LENGTHS)
    mask = np.zeros((rows, width), np.int64)
    for row, length in enumerate(_CALIBRATION_LENGTHS):
        mask[row, :length] = 1
    ids = rng.integers(0, vocab, (rows, width)).astype(np.int64) * mask
    known = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "position_ids": np.broadcast_to(np.arange(width, dtype=np.int64), ids.shape).copy(),
    }
    names = [i.name for i in model.graph.input]
    if any(name not in known for name in names):
        return []
    return [{name: known[name] for name in names}]


def _activation_maxima(
    onnx_in: Path, names: list[str], feeds: Sequence[Feed], scratch: str
) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each named tensor over the calibration feeds."""
    import onnxruntime as ort

    probe = onnx.load(str(onnx_in))
    outputs = {o.name for o in probe.graph.output}
    wanted = sorted(set(names))
    for name in wanted:
        if name not in outputs:
            probe.graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    path = Path(scratch) / "calibration.onnx"
    save_graph(probe, path)
    del probe
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(wanted, session.run(wanted, dict(feed)), strict=True):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(0)
            maxima[name] = np.maximum(maxima.get(name, 0.0), channel_max)
    return maxima


def _smooth(
    model: onnx.ModelProto,
    targets: list[onnx.NodeProto],
    maxima: Mapping[str, np.ndarray],
    alpha: float,
) -> None:
    """In place: x @ W -> (x * 1/s) @ (s * W) for each target (exact in fp32)."""
    initializers = _initializers(model)
    position = {id(n): i for i, n in enumerate(model.graph.node)}
    inserts: list[tuple[int, onnx.NodeProto]] = []
    for node in targets:
        weight_proto = initializers[node.input[1]]
        weight = numpy_helper.to_array(weight_proto)
        x_max = np.maximum(maxima[node.input[0]], 1e-5)
        w_max = np.maximum(np.abs(weight).max(1), 1e-5)
        scale = np.clip(x_max**alpha / w_max ** (1 - alpha), *_SCALE_LIMITS).astype(np.float32)
        weight_proto.CopyFrom(
            numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), node.input[1])
        )
        inverse = f"{node.name}_smoothing_inverse_scale"
        model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
        smoothed = f"{node.input[0]}_smoothed_for_{node.name}"
        mul = helper.make_node(
            "Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}_smoothing"
        )
        inserts.append((position[id(node)], mul))
        node.input[0] = smoothed
    for index, mul in sorted(inserts, key=lambda item: item[0], reverse=True):
        model.graph.node.insert(index, mul)


def convert_fp16(onnx_in: Path, onnx_out: Path) -> None:
    """fp16 weights and compute, fp32/int64 graph inputs and outputs kept as they were."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    _require_fp32_graph(onnx_in)
    model = OnnxModel(onnx.load(str(onnx_in)))
    model.convert_float_to_float16(keep_io_types=True)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    # Save through a scratch file first so a failure leaves no half-written graph behind.
    with tempfile.TemporaryDirectory(prefix="shoal-fp16-", dir=onnx_out.parent) as scratch:
        staged = Path(scratch) / onnx_out.name
        model.save_model_to_file(str(staged))
        staged.replace(onnx_out)
    logger.info("converted %s to fp16 -> %s", onnx_in.name, onnx_out)


# Ops that only a quantized or fp16 graph holds.
_CONVERTED_OPS = {
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "QAttention",
    "QLinearMatMul",
}


def _require_fp32_graph(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {path}")
    model = onnx.load(str(path), load_external_data=False)
    converted = sorted({n.op_type for n in model.graph.node} & _CONVERTED_OPS)
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    if converted or fp16:
        found = ", ".join(converted) if converted else "fp16 weights"
        raise ValueError(
            f"{path} is already converted ({found}): int8/fp16 conversion starts from the fp32 "
            f"graph that optimize_graph wrote"
        )
