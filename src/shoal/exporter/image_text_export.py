"""Exporting an image-text model (CLIP, SigLIP): one checkpoint -> two verified entries.

`<name>` embeds TEXT (tokenize -> text tower -> normalize) and `<name>-image` embeds IMAGE
(preprocess -> vision tower -> normalize), into the same space. Two entries rather than one
ensemble with optional inputs: a Triton ensemble runs every step on every request and has one
producer per output, so "TEXT or IMAGE" would need both towers to run on empty batches or a python
router step in front of both graphs; as two entries, each is a plain ensemble, each loads (and is
evicted, and scales) on its own, and a client names what it sends by the model it calls.

Called by shoal.exporter.export.export_model for task image-text (and verify_entry for `shoal
verify`). Order of work as for every export: both graphs exported and verified (both towers, at
fp32 and the asked dtype) before either entry is written; the entries are staged together and
moved into the repository text entry first, image entry second.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.contract import (
    INPUT_IMAGE,
    INPUT_TEXT,
    OUTPUT_EMBEDDING,
    Dtype,
    image_entry_name,
)
from shoal.exporter.checkpoint import TOKENIZER_FILES
from shoal.exporter.errors import ExportError
from shoal.exporter.fingerprint import source_hash, tool_versions
from shoal.exporter.image_text_parity import check_image_parity, check_text_parity
from shoal.exporter.options import ExportOptions, ExportPlan
from shoal.exporter.parity import THRESHOLDS, raise_on_failure
from shoal.manifest import Manifest, ParityResult, TensorSpec
from shoal.model_repository.entry import EntryError, write_entry
from shoal.model_repository.install import InstallError, install_entry, staging_dir
from shoal.model_repository.layout import EntryLayout
from shoal.postprocessing import GRAPH_EMBEDDINGS
from shoal.tokenization import TextEncoder

log = logging.getLogger(__name__)

TEXT_TOWER, IMAGE_TOWER = "text", "image"
PIXEL_VALUES = "pixel_values"
SAMPLE_TEXTS = ["a shoal of small fish moves as one", "fish"]  # different lengths: padding traced


@dataclasses.dataclass
class Tower:
    """One tower's verified graph and what its manifest needs."""

    kind: str  # TEXT_TOWER | IMAGE_TOWER
    entry: str  # the entry's name
    onnx: Path
    parity: list[ParityResult]


def export_image_text(
    adapter: Any,
    plan: ExportPlan,
    options: ExportOptions,
    name: str,
    repository: Path,
    version: int,
) -> Manifest:
    """Write entries `name` (text) and `name-image` (image) and return the text entry's manifest.
    The caller checked `name`'s destination; both entries get one version, past either's."""
    from shoal.exporter.export import check_destination, check_name, next_version

    image_name = image_entry_name(name)
    check_name(image_name)
    image_layout = EntryLayout(repository, image_name)
    check_destination(image_layout, options.overwrite)
    version = options.version or max(version, next_version(image_layout))
    repository.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(repository, name)
    try:
        manifests = _build_entries(adapter, plan, options, name, staging, version)
        for manifest in manifests:  # text first: a failure leaves no image entry without text
            staged = EntryLayout(staging / "repository", manifest.name, version)
            target = EntryLayout(repository, manifest.name, version)
            install_entry(staged, target, scratch=staging.parent)
    except InstallError as exc:
        raise ExportError(str(exc)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s and %s (version %d)", name, image_name, version)
    return Manifest.read(EntryLayout(repository, name).ensemble_dir)


def _build_entries(
    adapter: Any,
    plan: ExportPlan,
    options: ExportOptions,
    name: str,
    staging: Path,
    version: int,
) -> list[Manifest]:
    import torch
    from transformers import AutoTokenizer

    from shoal.exporter.torch_export import export_graph

    checkpoint = adapter.checkpoint
    work = staging / "work"
    work.mkdir()
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    model = adapter.load()
    encoder = TextEncoder.from_file(checkpoint.path / "tokenizer.json", plan.tokenization)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.path))

    text_module = adapter.graph_module(model, plan).eval()
    text_raw = work / "text" / "fp32.onnx"
    export_graph(
        text_module,
        adapter.graph_input_names(),
        text_module.output_names,
        encoder.encode(SAMPLE_TEXTS),
        text_raw,
        options.opset,
    )
    image_module = adapter.image_module(model).eval()
    settings = plan.extra["image_preprocessing"]
    sample = torch.randn(2, 3, settings["height"], settings["width"]).numpy()
    image_raw = work / "image" / "fp32.onnx"
    export_graph(
        image_module,
        [PIXEL_VALUES],
        image_module.output_names,
        {PIXEL_VALUES: sample},
        image_raw,
        options.opset,
        {PIXEL_VALUES: {0: "batch"}},
    )

    def text_check(path: Path, dtype: str) -> list[ParityResult]:
        return check_text_parity(adapter, model, hf_tokenizer, plan, path, encoder, dtype)

    def image_check(path: Path, dtype: str) -> list[ParityResult]:
        return check_image_parity(adapter, model, plan, path, dtype)

    towers = [
        _verified(TEXT_TOWER, name, text_raw, text_check, options.dtype, checkpoint.path),
        _verified(
            IMAGE_TOWER,
            image_entry_name(name),
            image_raw,
            image_check,
            options.dtype,
            checkpoint.path,
        ),
    ]
    tokenizer_dir = work / "tokenizer"
    tokenizer_dir.mkdir()
    for filename in TOKENIZER_FILES:
        if checkpoint.has(filename):
            shutil.copyfile(checkpoint.path / filename, tokenizer_dir / filename)
    manifests = []
    for tower in towers:
        manifest = tower_manifest(adapter, plan, options, tower, name, version)
        try:
            write_entry(
                staging / "repository",
                manifest,
                tower.onnx,
                tokenizer_dir if tower.kind == TEXT_TOWER else None,
                options.entry,
            )
        except EntryError as exc:
            raise ExportError(f"cannot lay out entry {tower.entry!r}: {exc}") from exc
        manifests.append(manifest)
    return manifests


ParityCheck = Callable[[Path, str], list[ParityResult]]  # (graph, dtype) -> results


def _verified(
    kind: str, entry: str, fp32: Path, check: ParityCheck, dtype: str, source: Path
) -> Tower:
    """The tower's graph at `dtype`, checked at fp32 and (when converted) at `dtype`."""
    from shoal.exporter.export import _convert_dtype

    parity = check(fp32, Dtype.FP32.value)
    raise_on_failure(parity, f"the fp32 export of {source}'s {kind} tower")
    final = fp32
    if dtype != Dtype.FP32.value:
        final = fp32.with_name(f"{dtype}.onnx")
        _convert_dtype(fp32, final, dtype)
        converted = check(final, dtype)
        raise_on_failure(converted, f"the {dtype} conversion of {source}'s {kind} tower")
        parity = parity + converted
    return Tower(kind, entry, final, parity)


# ------------------------------------------------------------------ manifests


def _onnx_facts(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec], int, int]:
    """Graph inputs and outputs (dtypes as stored), parameter count and weight bytes."""
    import numpy as np
    import onnx

    from shoal.exporter.torch_export import graph_io

    model = onnx.load(str(onnx_path))
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    weights = sum(
        p.stat().st_size for p in onnx_path.parent.iterdir() if p.name.startswith(onnx_path.name)
    )
    dims = {}
    for value in model.graph.input:
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = [d.dim_value if d.dim_value else -1 for d in shape[1:]]
    inputs, outputs = graph_io(onnx_path)
    return (
        [TensorSpec(n, dtype, dims[n]) for n, dtype in inputs],
        [TensorSpec(n, dtype, [-1]) for n, dtype in outputs],
        parameters,
        weights,
    )


def tower_manifest(
    adapter: Any,
    plan: ExportPlan,
    options: ExportOptions,
    tower: Tower,
    name: str,
    version: int,
) -> Manifest:
    from shoal.exporter.export import estimate_memory

    checkpoint = adapter.checkpoint
    width = plan.hidden_size
    encoder_inputs, encoder_outputs, parameters, weights = _onnx_facts(tower.onnx)
    encoder_outputs = [TensorSpec(GRAPH_EMBEDDINGS, encoder_outputs[0].dtype, [width])]
    text = tower.kind == TEXT_TOWER
    config = adapter.tower_config(TEXT_TOWER if text else "vision")
    length = plan.max_length if text else adapter.vision_tokens()
    extra: dict[str, Any] = {
        "postprocessing": plan.postprocessing,
        "optimization": {"fused_attention": 0, "note": "image-text graphs are not optimized"},
        "parity_thresholds": {
            k: {"min_cosine": v.min_cosine, "max_scaled_diff": v.max_scaled_diff}
            for k, v in THRESHOLDS.items()
        },
        "hidden_size": width,
        "num_layers": int(config.get("num_hidden_layers", 0)),
        "architectures": checkpoint.architectures,
        "tower": tower.kind,
    }
    if text:  # and the other tower's entry, embedding into the same space
        extra["image_entry"] = image_entry_name(name)
        extra["tokenization"] = plan.tokenization
        extra["vocab_size"] = int(config.get("vocab_size", 0))
    else:
        extra["text_entry"] = name
        extra["image_preprocessing"] = plan.extra["image_preprocessing"]
    source = INPUT_TEXT if text else INPUT_IMAGE
    return Manifest(
        name=tower.entry,
        source=str(checkpoint.path.resolve()),
        architecture=plan.family,
        model_type=checkpoint.model_type,
        task=plan.task.value,
        pooling=None,
        normalize=True,
        max_length=length,  # text: tokens; image: the vision tower's patch tokens
        dims=width,
        dtype=options.dtype,
        runtime=options.runtime,
        padding_side="right",
        inputs=[TensorSpec(source, "BYTES", [1])],
        outputs=[TensorSpec(OUTPUT_EMBEDDING, "FP32", [width])],
        encoder_inputs=encoder_inputs,
        encoder_outputs=encoder_outputs,
        parameter_count=parameters,
        weights_bytes=weights,
        memory_bytes=estimate_memory(
            config,
            dataclasses.replace(plan, max_length=length),
            options.max_batch_size,
            options.dtype,
            weights,
        ),
        max_batch_size=options.max_batch_size,
        fused_attention=0,
        onnx_opset=options.opset,
        sha256={},  # filled by write_entry
        source_sha256=source_hash(checkpoint.content_sha256(), options),
        parity=tower.parity,
        prefixes={},
        extra=extra,
        versions=tool_versions(),
        version=version,
    )


# ------------------------------------------------------------------ verify


def verify_image_text(
    adapter: Any, manifest: Manifest, onnx_path: Path, encoder: TextEncoder | None
) -> list[ParityResult]:
    """Re-run the parity of one entry (either tower) with the entry's own settings."""
    from transformers import AutoTokenizer

    plan = adapter.plan(ExportOptions(max_length=manifest.max_length if encoder else None))
    plan.postprocessing = manifest.extra.get("postprocessing", plan.postprocessing)
    model = adapter.load()
    if manifest.extra.get("tower") == IMAGE_TOWER:
        plan.extra["image_preprocessing"] = manifest.extra["image_preprocessing"]
        return check_image_parity(adapter, model, plan, onnx_path, manifest.dtype)
    if encoder is None:
        raise ExportError(f"{manifest.name}: the text entry has no tokenizer")
    plan.tokenization = manifest.extra.get("tokenization", plan.tokenization)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(adapter.checkpoint.path))
    return check_text_parity(adapter, model, hf_tokenizer, plan, onnx_path, encoder, manifest.dtype)
