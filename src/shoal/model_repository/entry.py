"""Writes one model-repository entry: the ensemble and its three steps, rendered from templates.

Called by the exporter (`shoal export`) with a staging repository; the exporter then moves the
staged folders into place atomically. Everything a template needs is computed here, in Python, so
the templates stay free of logic. The python steps read their settings from `step.json` in their
version folder (see `step_configs`), written from the manifest so that the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jinja2

from shoal.contract import (
    INPUT_ADAPTER,
    INPUT_IMAGE,
    INPUT_LABELS,
    INPUT_TEXT,
    INPUT_TEXT_TYPE,
    INPUT_THRESHOLD,
    STEP_ENCODE,
    STEP_POSTPROCESS,
    STEP_TOKENIZE,
    Runtime,
    Task,
)
from shoal.manifest import Manifest, TensorSpec
from shoal.model_repository.layout import KEEP_FILENAME, EntryLayout

log = logging.getLogger(__name__)

STEP_CONFIG_FILENAME = "step.json"
STEP_SOURCES_DIR = Path(__file__).with_name("steps")
TEMPLATES_DIR = Path(__file__).with_name("templates")
# The standalone modules the python steps import beside their model.py (no shoal imports inside).
TOKENIZATION_MODULE = "shoal.tokenization"
POSTPROCESSING_MODULE = "shoal.postprocessing"
SPAN_EXTRACTION_MODULE = "shoal.span_extraction"  # extract-zero-shot (GLiNER): both steps
# The image entry of an image-text export: its first step (in the tokenize slot, so that every tool
# that loads, checks and hot-swaps entries treats it as any entry's light first step) decodes and
# preprocesses images with this standalone module.
IMAGE_STEP_SOURCE = "preprocess_image.py"
IMAGE_PREPROCESSING_MODULE = "shoal.image_preprocessing"

# Tensors the tokenize step always produces: postprocess needs them even when the graph does not.
IDS = "input_ids"
MASK = "attention_mask"
# What the tokenize step adds for token classification (shoal.tokenization's names): the
# postprocess step maps entities back to characters with them.
TOKEN_OFFSETS = "token_offsets"
WORD_IDS = "word_ids"
TOKEN_INFO = (TensorSpec(TOKEN_OFFSETS, "INT64", [-1, 2]), TensorSpec(WORD_IDS, "INT64", [-1]))
# What the tokenize step adds for zero-shot span extraction (shoal.span_extraction's names): each
# word's character offsets and each row's threshold.
SPAN_INFO = (TensorSpec("word_offsets", "INT64", [-1, 2]), TensorSpec("thresholds", "FP32", [1]))
# The ensemble's own inputs that the postprocess step reads too (not ragged: one per row).
ROW_INPUTS = (INPUT_TEXT, INPUT_LABELS)
# A text over this many UTF-8 bytes is refused before tokenization (a few thousand tokens need a
# few tens of KB; megabytes are a mistake or an attack and would stall the tokenize instance).
DEFAULT_MAX_TEXT_BYTES = 1 << 20
# Image files over this many bytes, or whose header declares over this many pixels, are refused
# before their pixels are decoded (a few-KB PNG can expand to gigabytes: a decompression bomb).
# 64 megapixels holds any camera photo; decoded, it is ~200 MB of RGB.
DEFAULT_MAX_IMAGE_BYTES = 32 << 20
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
# Keys of step.json that come from EntryOptions rather than the manifest (a check ignores them).
OPTION_KEYS = frozenset(
    {
        "pad_to_multiple_of",
        "max_text_bytes",
        "threads",
        "spinning",
        "length_slack",
        "min_group_tokens",
        "max_image_bytes",
        "max_image_pixels",
    }
)
# step.json keys added after entries were first written: an older entry without one is still
# whole (its step code predates the key and does not read it); when present it must match.
LATER_KEYS = frozenset({"pad_token_id"})


class InstanceKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class GpuAccelerator(StrEnum):
    """Execution accelerator of the onnxruntime backend on GPU instances."""

    TENSORRT = "tensorrt"  # onnxruntime's TensorRT execution provider (fp16), CUDA as fallback
    CUDA = "cuda"  # CUDA execution provider only: no engine build at load, faster hot-swap


@dataclass(frozen=True)
class EntryOptions:
    """How an entry is served. The model's facts (task, dims, max length) live in the manifest.

    `runtime` and `max_batch_size` default to the manifest's values; when given they must agree
    with it (the manifest's memory estimate was computed for its max batch size).
    """

    runtime: Runtime | None = None
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 500
    instance_count: int = 1
    instance_kind: InstanceKind = InstanceKind.CPU
    gpu_accelerator: GpuAccelerator = GpuAccelerator.TENSORRT  # onnxruntime runtime, GPU only
    tensorrt_fp16: bool = True
    tensorrt_cache_dir: str = "/tmp/shoal-tensorrt-cache"  # must be writable inside the pod
    tokenize_instance_count: int = 1
    postprocess_instance_count: int = 1
    # onnxruntime's dynamic batcher only joins requests of equal shape: rounding the sequence
    # length up to a multiple makes more requests join. None = 32 for onnxruntime, 1 for portable
    # (whose step pads a batch of requests itself).
    pad_to_multiple_of: int | None = None
    encode_threads: int = 0  # onnxruntime intra-op threads in the portable step; 0 = its default
    # onnxruntime's threads busy-wait between runs unless told not to: on a CPU pool that takes
    # cores from the tokenize/postprocess steps and Triton (benchmarks/triton_path.py).
    encode_spinning: bool = False
    # Length-aware runs in the portable step (steps/encode_portable.py): rows are grouped by real
    # length so that a group's padded tokens stay within (1 + slack) x its real tokens, once a
    # group holds min_group_tokens. slack < 0 turns grouping off (one padded run per batch).
    # 0.1 / 64 had the least CPU per sentence of the settings tried on MiniLM (1 and 2 threads).
    length_slack: float = 0.1
    min_group_tokens: int = 64
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # image entries (image-text exports) only
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if self.runtime is not None:
            object.__setattr__(self, "runtime", Runtime(self.runtime))
        object.__setattr__(self, "instance_kind", InstanceKind(self.instance_kind))
        object.__setattr__(self, "gpu_accelerator", GpuAccelerator(self.gpu_accelerator))
        for name in ("instance_count", "tokenize_instance_count", "postprocess_instance_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"EntryOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"EntryOptions.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.min_group_tokens < 1:
            raise ValueError(
                f"EntryOptions.min_group_tokens must be >= 1, got {self.min_group_tokens}"
            )
        if self.max_queue_delay_microseconds < 0:
            raise ValueError("EntryOptions.max_queue_delay_microseconds must be >= 0")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError("EntryOptions.pad_to_multiple_of must be >= 1")
        if self.max_text_bytes < 1:
            raise ValueError("EntryOptions.max_text_bytes must be >= 1")
        for name in ("max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"EntryOptions.{name} must be >= 1, got {getattr(self, name)}")


class EntryError(ValueError):
    """The manifest, options or files cannot make a consistent entry."""


@dataclass(frozen=True)
class ResolvedOptions:
    """EntryOptions with every default filled in from the manifest."""

    options: EntryOptions
    runtime: Runtime
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    pad_to_multiple_of: int


def resolve_options(manifest: Manifest, options: EntryOptions) -> ResolvedOptions:
    runtime = Runtime(options.runtime or manifest.runtime)
    if options.runtime is not None and Runtime(manifest.runtime) != options.runtime:
        raise EntryError(
            f"options.runtime is {options.runtime.value!r} but the manifest of {manifest.name!r} says "
            f"{manifest.runtime!r}; set the manifest's runtime, or leave options.runtime unset"
        )
    max_batch_size = options.max_batch_size or manifest.max_batch_size
    if options.max_batch_size is not None and options.max_batch_size != manifest.max_batch_size:
        raise EntryError(
            f"options.max_batch_size is {options.max_batch_size} but the manifest of "
            f"{manifest.name!r} says {manifest.max_batch_size} (its memory estimate uses it)"
        )
    if max_batch_size < 1:
        raise EntryError(f"max_batch_size must be >= 1, the manifest says {max_batch_size}")
    too_big = [s for s in options.preferred_batch_sizes if not 1 <= s <= max_batch_size]
    if too_big:
        raise EntryError(
            f"preferred batch sizes {too_big} are outside 1..max_batch_size ({max_batch_size})"
        )
    pad = options.pad_to_multiple_of
    if pad is None:
        pad = 32 if runtime is Runtime.ONNXRUNTIME else 1
    return ResolvedOptions(
        options=options,
        runtime=runtime,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(sorted(set(options.preferred_batch_sizes))),
        pad_to_multiple_of=pad,
    )


# ---------------------------------------------------------------------------------------------
# The tensors flowing between steps


@dataclass(frozen=True)
class EntryTensors:
    """Names and shapes of everything an ensemble wires together."""

    inputs: list[TensorSpec]  # ensemble inputs (what applications send)
    outputs: list[TensorSpec]  # ensemble outputs (what applications get)
    tokens: list[TensorSpec]  # tokenize outputs: the graph inputs plus ids and mask (+ token info)
    encoder_inputs: list[TensorSpec]
    encoder_outputs: list[TensorSpec]
    postprocess_inputs: list[TensorSpec]  # ids, mask, the graph outputs (+ text, token info)
    adapter: TensorSpec | None = None  # the optional ADAPTER input of entries with LoRA adapters

    @property
    def tokenize_inputs(self) -> list[TensorSpec]:
        """The ensemble inputs the tokenize step reads (ADAPTER goes to the encode step)."""
        return [t for t in self.inputs if t.name != INPUT_ADAPTER]

    @property
    def encode_inputs(self) -> list[TensorSpec]:
        """What the encode step declares: the graph's inputs, plus ADAPTER."""
        return [*self.encoder_inputs, *([self.adapter] if self.adapter else [])]


def is_image_entry(manifest: Manifest) -> bool:
    """The image entry of an image-text export: IMAGE in, pixel values to its graph."""
    return any(t.name == INPUT_IMAGE for t in manifest.inputs)


def _image_entry_tensors(manifest: Manifest) -> EntryTensors:
    """IMAGE -> preprocess (tokenize slot) -> pixel_values -> encode -> embeddings ->
    postprocess -> EMBEDDING: no token ids anywhere."""
    if not manifest.outputs:
        raise EntryError(f"the manifest of {manifest.name!r} lists no outputs")
    return EntryTensors(
        inputs=list(manifest.inputs),
        outputs=list(manifest.outputs),
        tokens=list(manifest.encoder_inputs),
        encoder_inputs=list(manifest.encoder_inputs),
        encoder_outputs=list(manifest.encoder_outputs),
        postprocess_inputs=list(manifest.encoder_outputs),
    )


def entry_tensors(manifest: Manifest) -> EntryTensors:
    if is_image_entry(manifest):
        return _image_entry_tensors(manifest)
    encoder_inputs = list(manifest.encoder_inputs)
    names = {t.name for t in encoder_inputs}
    if IDS not in names:
        raise EntryError(
            f"the manifest of {manifest.name!r} lists encoder inputs {sorted(names)} without "
            f"{IDS!r}: shoal's tokenize step feeds graphs that take token ids"
        )
    tokens = list(encoder_inputs)
    if MASK not in names:
        tokens.append(TensorSpec(MASK, "INT64", [-1]))
    by_name = {t.name: t for t in tokens}
    post_inputs = [by_name[IDS], by_name[MASK], *manifest.encoder_outputs]
    if manifest.task == Task.EXTRACT.value:
        tokens += TOKEN_INFO
        text = next(t for t in manifest.inputs if t.name == INPUT_TEXT)
        post_inputs += [text, *TOKEN_INFO]
    if manifest.task == Task.EXTRACT_ZERO_SHOT.value:
        tokens += SPAN_INFO
        row_inputs = [t for t in manifest.inputs if t.name in ROW_INPUTS]
        post_inputs += [*row_inputs, *SPAN_INFO]
    clash = {t.name for t in manifest.encoder_outputs} & {IDS, MASK}
    if clash:
        raise EntryError(f"encoder outputs may not be named {sorted(clash)}")
    if not manifest.outputs:
        raise EntryError(f"the manifest of {manifest.name!r} lists no outputs")
    adapter = next((t for t in manifest.inputs if t.name == INPUT_ADAPTER), None)
    if bool(adapter) != bool(manifest.adapters):
        raise EntryError(
            f"the manifest of {manifest.name!r} lists {len(manifest.adapters)} LoRA adapters "
            f"but {'an' if adapter else 'no'} {INPUT_ADAPTER} input; re-export the model"
        )
    return EntryTensors(
        inputs=list(manifest.inputs),
        outputs=list(manifest.outputs),
        tokens=tokens,
        encoder_inputs=encoder_inputs,
        encoder_outputs=list(manifest.encoder_outputs),
        postprocess_inputs=post_inputs,
        adapter=adapter,
    )


def _internal(step: str, tensor: str) -> str:
    """Ensemble-internal tensor name: unique, never equal to an ensemble input or output."""
    return f"{step}__{tensor}"


# ---------------------------------------------------------------------------------------------
# Template context


def _tensor_context(spec: TensorSpec, **extra: Any) -> dict[str, Any]:
    dtype = "STRING" if spec.dtype == "BYTES" else spec.dtype
    context = {"name": spec.name, "data_type": f"TYPE_{dtype}", "dims": list(spec.dims)}
    return {**context, "optional": False, "ragged": False, **extra}


def _dynamic_batching(resolved: ResolvedOptions, *, preferred: bool) -> dict[str, Any]:
    return {
        "preferred_batch_sizes": list(resolved.preferred_batch_sizes) if preferred else [],
        "max_queue_delay_microseconds": resolved.options.max_queue_delay_microseconds
        if preferred
        else 0,
    }


def _python_step_context(
    name: str,
    resolved: ResolvedOptions,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    *,
    instance_count: int,
    instance_kind: InstanceKind,
    encode: bool,
) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": resolved.max_batch_size,
        "inputs": inputs,
        "outputs": outputs,
        "instance_count": instance_count,
        "instance_kind": f"KIND_{instance_kind.value.upper()}",
        "dynamic_batching": _dynamic_batching(resolved, preferred=encode),
        "accelerators": [],
    }


def _tensorrt_profile(
    tensors: list[TensorSpec], batch: int, length: int, scale: dict[str, int] | None = None
) -> str:
    """TensorRT shapes: batch, then each dim (-1: `length`, times the input's `scale`: GLiNER's
    spans are up to max_width per word; fixed dims as they are)."""
    scale = scale or {}

    def shape(t: TensorSpec) -> str:
        dims = [length * scale.get(t.name, 1) if d == -1 else d for d in t.dims]
        return "x".join(str(d) for d in (batch, *dims))

    return ",".join(f"{t.name}:{shape(t)}" for t in tensors)


def _onnxruntime_encode_context(
    name: str, manifest: Manifest, resolved: ResolvedOptions, tensors: EntryTensors
) -> dict[str, Any]:
    options = resolved.options
    accelerators: list[dict[str, Any]] = []
    if options.instance_kind is InstanceKind.GPU:
        if options.gpu_accelerator is GpuAccelerator.TENSORRT:
            mbs, length = resolved.max_batch_size, manifest.max_length
            scale = manifest.extra.get("tensorrt_axis_scale") or {}
            params = {
                "precision_mode": "FP16" if options.tensorrt_fp16 else "FP32",
                "max_workspace_size_bytes": str(1 << 30),
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": f"{options.tensorrt_cache_dir}/{name}",
                # One optimization profile over every shape the tokenize step can send, so the
                # engine is built once at load and never rebuilt for a new shape.
                "trt_profile_min_shapes": _tensorrt_profile(tensors.encoder_inputs, 1, 1, scale),
                "trt_profile_opt_shapes": _tensorrt_profile(
                    tensors.encoder_inputs, max(1, mbs // 2), min(length, 128), scale
                ),
                "trt_profile_max_shapes": _tensorrt_profile(
                    tensors.encoder_inputs, mbs, length, scale
                ),
            }
        else:
            params = {"use_ep_level_unified_stream": "1"}
        accelerators.append({"name": options.gpu_accelerator.value, "parameters": params})
    return {
        "name": name,
        "backend": "onnxruntime",
        "default_model_filename": "model.onnx",
        "max_batch_size": resolved.max_batch_size,
        "inputs": [_tensor_context(t) for t in tensors.encoder_inputs],
        "outputs": [_tensor_context(t) for t in tensors.encoder_outputs],
        "instance_count": options.instance_count,
        "instance_kind": f"KIND_{options.instance_kind.value.upper()}",
        "dynamic_batching": _dynamic_batching(resolved, preferred=True),
        "accelerators": accelerators,
    }


def _encode_step_inputs(tensors: EntryTensors) -> list[dict[str, Any]]:
    """The portable encode step's inputs: the graph's (ragged), and the optional ADAPTER."""
    inputs = [_tensor_context(t, ragged=True) for t in tensors.encoder_inputs]
    if tensors.adapter:
        inputs.append(_tensor_context(tensors.adapter, optional=True))
    return inputs


def config_contexts(manifest: Manifest, resolved: ResolvedOptions) -> dict[str, dict[str, Any]]:
    """Template context of each Triton model of the entry, keyed by step (and "ensemble")."""
    layout = EntryLayout(Path("."), manifest.name)
    names = layout.step_names
    tensors = entry_tensors(manifest)
    options = resolved.options
    optional = {INPUT_TEXT_TYPE, INPUT_ADAPTER, INPUT_THRESHOLD}

    ensemble_inputs = [_tensor_context(t, optional=t.name in optional) for t in tensors.inputs]
    tokenize_inputs = [
        _tensor_context(t, optional=t.name in optional, ragged=False)
        for t in tensors.tokenize_inputs
    ]
    tokenize_outputs = [_tensor_context(t) for t in tensors.tokens]
    # Variable-length inputs of requests with different lengths may share a batch only when
    # declared ragged; the python steps then handle each request's own shape.
    post_inputs = [
        _tensor_context(t, ragged=t.name not in ROW_INPUTS) for t in tensors.postprocess_inputs
    ]
    post_outputs = [_tensor_context(t) for t in tensors.outputs]

    contexts: dict[str, dict[str, Any]] = {}
    contexts[STEP_TOKENIZE] = _python_step_context(
        names[STEP_TOKENIZE],
        resolved,
        tokenize_inputs,
        tokenize_outputs,
        instance_count=options.tokenize_instance_count,
        instance_kind=InstanceKind.CPU,
        encode=False,
    )
    if resolved.runtime is Runtime.ONNXRUNTIME:
        if tensors.adapter:
            raise EntryError(
                f"{manifest.name!r} has LoRA adapters, which only the portable runtime serves "
                "(Triton's onnxruntime backend cannot activate an adapter per request)"
            )
        contexts[STEP_ENCODE] = _onnxruntime_encode_context(
            names[STEP_ENCODE], manifest, resolved, tensors
        )
    else:
        contexts[STEP_ENCODE] = _python_step_context(
            names[STEP_ENCODE],
            resolved,
            _encode_step_inputs(tensors),
            [_tensor_context(t) for t in tensors.encoder_outputs],
            instance_count=options.instance_count,
            instance_kind=options.instance_kind,
            encode=True,
        )
    contexts[STEP_POSTPROCESS] = _python_step_context(
        names[STEP_POSTPROCESS],
        resolved,
        post_inputs,
        post_outputs,
        instance_count=options.postprocess_instance_count,
        instance_kind=InstanceKind.CPU,
        encode=False,
    )

    token_names = {t.name for t in tensors.tokens}
    encoder_output_names = {t.name for t in tensors.encoder_outputs}

    def postprocess_source(tensor: str) -> str:
        if tensor in ROW_INPUTS:
            return tensor  # the ensemble's own input
        step = STEP_ENCODE if tensor in encoder_output_names else STEP_TOKENIZE
        return _internal(step, tensor)

    steps = [
        {
            "model_name": names[STEP_TOKENIZE],
            "input_map": [(t.name, t.name) for t in tensors.tokenize_inputs],
            "output_map": [(t, _internal(STEP_TOKENIZE, t)) for t in sorted(token_names)],
        },
        {
            "model_name": names[STEP_ENCODE],
            "input_map": [
                (t.name, _internal(STEP_TOKENIZE, t.name)) for t in tensors.encoder_inputs
            ]
            + ([(INPUT_ADAPTER, INPUT_ADAPTER)] if tensors.adapter else []),
            "output_map": [
                (t.name, _internal(STEP_ENCODE, t.name)) for t in tensors.encoder_outputs
            ],
        },
        {
            "model_name": names[STEP_POSTPROCESS],
            "input_map": [(t.name, postprocess_source(t.name)) for t in tensors.postprocess_inputs],
            "output_map": [(t.name, t.name) for t in tensors.outputs],
        },
    ]
    contexts["ensemble"] = {
        "name": manifest.name,
        "max_batch_size": resolved.max_batch_size,
        "inputs": ensemble_inputs,
        "outputs": [_tensor_context(t) for t in tensors.outputs],
        "steps": steps,
    }
    return contexts


_TEMPLATE_BY_CONTEXT = {
    STEP_TOKENIZE: "model.pbtxt.j2",
    STEP_ENCODE: "model.pbtxt.j2",
    STEP_POSTPROCESS: "model.pbtxt.j2",
    "ensemble": "ensemble.pbtxt.j2",
}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_configs(manifest: Manifest, options: EntryOptions) -> dict[str, str]:
    """config.pbtxt text of every Triton model of the entry, keyed by step (and "ensemble")."""
    resolved = resolve_options(manifest, options)
    env = _environment()
    env.filters["pbtxt_string"] = json.dumps  # a JSON string literal is a valid pbtxt string
    # Each model serves exactly the entry's version, and the ensemble calls exactly that version of
    # its steps: a folder of another version (being published, or not yet removed) is never loaded.
    return {
        key: env.get_template(_TEMPLATE_BY_CONTEXT[key]).render(version=manifest.version, **context)
        for key, context in config_contexts(manifest, resolved).items()
    }


# ---------------------------------------------------------------------------------------------
# Step settings (step.json)


def _extra_settings(manifest: Manifest, key: str) -> dict[str, Any]:
    settings = manifest.extra.get(key)
    if not isinstance(settings, dict):
        raise EntryError(
            f"the manifest of {manifest.name!r} has no extra[{key!r}] settings (written by "
            "`shoal export`); re-export the model with this version of shoal"
        )
    return settings


def step_configs(manifest: Manifest, options: EntryOptions) -> dict[str, dict[str, Any]]:
    """What each python step reads in `initialize` (its step.json), from the manifest (the
    exporter's tokenization/postprocessing settings, verified at parity) and the options."""
    resolved = resolve_options(manifest, options)
    postprocessing = _extra_settings(manifest, "postprocessing")
    configs: dict[str, dict[str, Any]] = {
        STEP_TOKENIZE: _first_step_config(manifest, resolved),
        STEP_POSTPROCESS: {
            "model": manifest.name,
            "task": manifest.task,
            "postprocessing": postprocessing,
        },
    }
    if resolved.runtime is Runtime.PORTABLE:
        configs[STEP_ENCODE] = {
            "model": manifest.name,
            "onnx": "model.onnx",
            "padding_side": manifest.padding_side,
            # null for image entries (pixel values, no padding to cut)
            "pad_token_id": (manifest.extra.get("tokenization") or {}).get("pad_token_id"),
            "threads": options.encode_threads,
            "spinning": options.encode_spinning,
            "length_slack": options.length_slack,
            "min_group_tokens": options.min_group_tokens,
            "adapters": {a.name: a.file for a in manifest.adapters},
        }
    return configs


def _first_step_config(manifest: Manifest, resolved: ResolvedOptions) -> dict[str, Any]:
    """step.json of the tokenize step, or of an image entry's preprocess step."""
    options = resolved.options
    if is_image_entry(manifest):
        return {
            "model": manifest.name,
            "task": manifest.task,
            "image_preprocessing": _extra_settings(manifest, "image_preprocessing"),
            "max_image_bytes": options.max_image_bytes,
            "max_image_pixels": options.max_image_pixels,
        }
    tokenization = _extra_settings(manifest, "tokenization")
    tensors = entry_tensors(manifest)
    produced = {IDS, MASK} | ({"token_type_ids"} if tokenization.get("token_type_ids") else set())
    if tokenization.get("token_info") is not None:
        produced |= {TOKEN_OFFSETS, WORD_IDS}
    if manifest.task == Task.EXTRACT_ZERO_SHOT.value:
        produced |= {t.name for t in (*manifest.encoder_inputs, *SPAN_INFO)}
    unknown = sorted({t.name for t in tensors.tokens} - produced)
    if unknown:
        raise EntryError(
            f"the encoder of {manifest.name!r} takes {unknown}, which the tokenize step does not "
            f"produce (it produces {sorted(produced)})"
        )
    return {
        "model": manifest.name,
        "task": manifest.task,
        "tokenization": tokenization,
        "tokenizer_dir": "tokenizer",
        "pad_to_multiple_of": resolved.pad_to_multiple_of,
        "max_text_bytes": options.max_text_bytes,
    }


# ---------------------------------------------------------------------------------------------
# Writing


def _copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)


def entry_files(layout: EntryLayout) -> list[Path]:
    """Every file Triton reads or executes for the entry's version: each model's config.pbtxt and
    everything in its version folder (byte-code caches aside: Python checks them against the
    sources). The manifest is not among them (it holds their hashes)."""
    files = []
    for model in layout.triton_models:
        config = layout.model_dir(model) / "config.pbtxt"
        if config.is_file() or config.is_symlink():
            files.append(config)
        version_dir = layout.version_dir(model)
        if version_dir.is_dir():
            files += [
                p
                for p in sorted(version_dir.rglob("*"))
                if not p.is_dir() and "__pycache__" not in p.relative_to(version_dir).parts
            ]
    return files


def entry_hashes(layout: EntryLayout) -> dict[str, str]:
    """sha256 of every file of `entry_files`, keyed by its repository-relative POSIX path."""
    return {
        path.relative_to(layout.repository).as_posix(): sha256_file(path)
        for path in entry_files(layout)
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_external_data_files(onnx_path: Path) -> list[str]:
    """Relative locations of the external-data files an ONNX graph refers to."""
    import onnx  # the export extra; only the exporter writes entries

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations: set[str] = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return sorted(locations)


def _module_source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise EntryError(f"cannot find {module} (its source is copied into the python steps)")
    return Path(spec.origin)


def write_entry(
    staging_repository: Path,
    manifest: Manifest,
    onnx_path: Path,
    tokenizer_dir: Path | None,
    options: EntryOptions,
    adapter_files: dict[str, Path] | None = None,
) -> EntryLayout:
    """Lay out the four Triton models of `manifest.name` under `staging_repository`, in version
    folder `manifest.version`.

    Copies the ONNX graph (and its external data) and the tokenizer files (an image entry has
    none: `tokenizer_dir` None, its first step preprocesses images), renders every
    config.pbtxt, copies the step sources, and writes the manifest with `sha256` filled in for
    every file Triton reads (paths relative to the repository root). The caller moves the staged
    folders into the real repository. `adapter_files`: each LoRA adapter's file by name (the
    manifest's `adapters`), copied beside the graph.
    """
    staging_repository = Path(staging_repository)
    onnx_path = Path(onnx_path)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    image = is_image_entry(manifest)
    if not onnx_path.is_file():
        raise EntryError(f"ONNX graph {onnx_path} not found")
    if not image and (tokenizer_dir is None or not (tokenizer_dir / "tokenizer.json").is_file()):
        raise EntryError(
            f"{tokenizer_dir} has no tokenizer.json: the tokenize step needs a fast tokenizer"
        )
    configs = render_configs(manifest, options)
    settings = step_configs(manifest, options)
    resolved = resolve_options(manifest, options)
    layout = EntryLayout(staging_repository, manifest.name, manifest.version)
    existing = [d for d in layout.dirs if d.exists()]
    if existing:
        raise EntryError(f"staging folders already exist: {', '.join(map(str, existing))}")

    step_dirs = {
        STEP_TOKENIZE: layout.tokenize_dir,
        STEP_ENCODE: layout.encode_dir,
        STEP_POSTPROCESS: layout.postprocess_dir,
        "ensemble": layout.ensemble_dir,
    }
    for key, directory in step_dirs.items():
        (directory / layout.version_folder).mkdir(parents=True)
        (directory / "config.pbtxt").write_text(configs[key])

    # encode: the graph, its external data, and (portable) the python step running it
    # encode: the graph, its external data, and (portable) the python step running it
    _copy(onnx_path, layout.onnx_path)
    for location in onnx_external_data_files(onnx_path):
        _copy(onnx_path.parent / location, layout.onnx_path.parent / location)
    version = layout.version_folder
    if resolved.runtime is Runtime.PORTABLE:
        _copy(STEP_SOURCES_DIR / "encode_portable.py", layout.encode_dir / version / "model.py")
    adapter_files = adapter_files or {}
    missing = sorted({a.name for a in manifest.adapters} - set(adapter_files))
    if missing:
        raise EntryError(f"no file given for LoRA adapters {missing} of {manifest.name!r}")
    for spec in manifest.adapters:
        _copy(adapter_files[spec.name], layout.encode_dir / version / spec.file)

    if image:  # the image preprocess step with its standalone module
        _copy(STEP_SOURCES_DIR / IMAGE_STEP_SOURCE, layout.tokenize_dir / version / "model.py")
        _copy(
            _module_source(IMAGE_PREPROCESSING_MODULE),
            layout.tokenize_dir / version / "image_preprocessing.py",
        )
    elif tokenizer_dir is not None:  # the tokenizer files, the step and its tokenization module
        for source in sorted(p for p in tokenizer_dir.rglob("*") if p.is_file()):
            _copy(source, layout.tokenizer_dir / source.relative_to(tokenizer_dir))
        _copy(STEP_SOURCES_DIR / "tokenize.py", layout.tokenize_dir / version / "model.py")
        _copy(
            _module_source(TOKENIZATION_MODULE), layout.tokenize_dir / version / "tokenization.py"
        )

    # postprocess: the step and its standalone postprocessing module
    _copy(STEP_SOURCES_DIR / "postprocess.py", layout.postprocess_dir / version / "model.py")
    _copy(
        _module_source(POSTPROCESSING_MODULE),
        layout.postprocess_dir / version / "postprocessing.py",
    )

    if manifest.task == Task.EXTRACT_ZERO_SHOT.value:
        for step_dir in (layout.tokenize_dir, layout.postprocess_dir):
            _copy(
                _module_source(SPAN_EXTRACTION_MODULE), step_dir / version / "span_extraction.py"
            )

    (layout.version_dir(layout.model) / KEEP_FILENAME).write_bytes(b"")
    for key, setting in settings.items():
        path = step_dirs[key] / version / STEP_CONFIG_FILENAME
        path.write_text(json.dumps(setting, indent=2, sort_keys=True) + "\n")

    # Every file Triton reads or executes is hashed: configs, step code, settings, graph, tokenizer.
    written = dataclasses.replace(
        manifest, runtime=resolved.runtime.value, sha256=dict(sorted(entry_hashes(layout).items()))
    )
    written.write(layout.ensemble_dir)
    log.info(
        "wrote entry %s (%s runtime) under %s", manifest.name, resolved.runtime, staging_repository
    )
    return layout
