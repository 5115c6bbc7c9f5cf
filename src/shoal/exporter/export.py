"""`export_model`: a Hugging Face checkpoint -> a verified model-repository entry, atomically;
`verify_entry`: re-run the parity check of an existing entry.

Order of work: check the checkpoint and options (nothing heavy yet) -> export the graph module
with torch -> optimize (fused attention) -> convert dtype -> parity against the PyTorch reference
-> write the whole entry into a staging folder (shoal.model_repository.entry.write_entry) -> move
its folders into the repository, steps first, ensemble last. Any failure before the move leaves
the repository untouched; the move itself swaps each folder with a rename.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from shoal.contract import (
    INPUT_ADAPTER,
    INPUT_LABELS,
    INPUT_QUERY,
    INPUT_TEXT,
    INPUT_TEXT_TYPE,
    INPUT_THRESHOLD,
    OUTPUT_COLBERT_LENGTHS,
    OUTPUT_COLBERT_VECTORS,
    OUTPUT_EMBEDDING,
    OUTPUT_ENTITIES,
    OUTPUT_SCORE,
    OUTPUT_SPARSE_INDICES,
    OUTPUT_SPARSE_VALUES,
    Dtype,
    Task,
    model_name_problem,
)
from shoal.exporter.adapters import Adapter, detect_adapter
from shoal.exporter.checkpoint import TOKENIZER_FILES, inspect_checkpoint
from shoal.exporter.errors import ExportError
from shoal.exporter.fingerprint import adapters_hash, source_hash, tool_versions
from shoal.exporter.options import ExportOptions, ExportPlan
from shoal.exporter.parity import THRESHOLDS, check_parity, family_threshold, raise_on_failure
from shoal.manifest import LoraAdapterSpec, Manifest, ManifestError, ParityResult, TensorSpec
from shoal.model_repository.entry import EntryError, write_entry
from shoal.model_repository.install import (
    InstallError,
    foreign_folders,
    install_entry,
    staging_dir,
)
from shoal.model_repository.layout import EntryLayout
from shoal.tokenization import TextEncoder

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ checks before work


def check_name(name: str) -> None:
    problem = model_name_problem(name)
    if problem:
        raise ExportError(problem)


def check_destination(layout: EntryLayout, overwrite: bool) -> None:
    """An existing entry is replaced only when asked; folders that are not a shoal entry never."""
    foreign = foreign_folders(layout)
    if foreign:
        raise ExportError(
            f"{', '.join(map(str, foreign))} exist but are not a shoal entry (no "
            f"{layout.manifest_path.name} in {layout.ensemble_dir}); shoal will not replace them: "
            "choose another --name or remove the folders"
        )
    existing = [d for d in layout.dirs if d.exists()]
    if existing and not overwrite:
        raise ExportError(
            f"an entry named {layout.model!r} already exists in {layout.repository} "
            f"({', '.join(d.name for d in existing)}); pass --overwrite to replace it atomically, "
            "or choose another --name"
        )


def next_version(layout: EntryLayout) -> int:
    """The Triton version folder of a new export: one past the entry's current version, so that a
    replica serving the old version never reads a file of the new one."""
    if not layout.manifest_path.is_file():
        return 1
    try:
        return Manifest.read(layout.ensemble_dir).version + 1
    except ManifestError:
        return 1  # an unreadable manifest: its entry is replaced whole all the same


# ------------------------------------------------------------------ export


def export_model(
    source: str | Path,
    name: str,
    repository: Path,
    options: ExportOptions | None = None,
) -> Manifest:
    """Export `source` as entry `name` of `repository` and return the written manifest."""
    options = options or ExportOptions()
    check_name(name)
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"--repository {repository} is a file; give a folder")
    layout = EntryLayout(repository, name)
    check_destination(layout, options.overwrite)
    checkpoint = inspect_checkpoint(source)
    adapter = detect_adapter(checkpoint, options.family, options.task)
    plan = adapter.plan(options)
    log.info("exporting %s as %r (family %s, task %s)", source, name, plan.family, plan.task)

    version = options.version or next_version(layout)
    if plan.task == Task.IMAGE_TEXT:  # two towers, two entries (text, image)
        from shoal.exporter.image_text_export import export_image_text

        return export_image_text(adapter, plan, options, name, repository, version)
    repository.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(repository, name)
    try:
        _build_entry(adapter, plan, options, name, staging, version)
        staged = EntryLayout(staging / "repository", name, version)
        install_entry(staged, EntryLayout(repository, name, version), scratch=staging.parent)
    except InstallError as exc:
        raise ExportError(str(exc)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s (version %d)", layout.ensemble_dir, version)
    return Manifest.read(layout.ensemble_dir)


def _build_entry(
    adapter: Adapter,
    plan: ExportPlan,
    options: ExportOptions,
    name: str,
    staging: Path,
    version: int,
) -> Manifest:
    import torch

    from shoal.exporter.torch_export import export_graph

    checkpoint = adapter.checkpoint
    work = staging / "work"
    work.mkdir()
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    model = adapter.load()
    loras = _read_loras(model, options)
    slotted, slot_values = model, {}
    if loras:
        from shoal.exporter.lora import union_of_targets, with_slots

        slotted, slot_values = with_slots(model, union_of_targets(loras))
    module = adapter.graph_module(slotted, plan).eval()
    sample = adapter.export_sample(plan)
    raw = work / "raw.onnx"
    export_graph(
        module,
        adapter.graph_input_names(),
        module.output_names,
        sample,
        raw,
        options.opset,
        adapter.graph_axes(),
    )

    slots: list[str] = []
    if loras:
        from shoal.exporter.lora_graph import open_slots

        slots = open_slots(raw, slot_values)
    fp32 = work / "fp32.onnx"
    optimization = _optimize(adapter, raw, fp32, options.optimize)
    parity = adapter.check_parity(model, plan, fp32, Dtype.FP32.value)
    raise_on_failure(parity, f"the fp32 export of {checkpoint.path}")
    lora_specs, adapter_files = [], {}
    if loras:
        from transformers import AutoTokenizer

        _note_unfused_attention(optimization)
        encoder = TextEncoder.from_file(checkpoint.path / "tokenizer.json", plan.tokenization)
        hf_tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.path))
        lora_specs, adapter_files = _export_loras(
            adapter, model, loras, hf_tokenizer, plan, fp32, encoder, slots, work / "adapters"
        )
    final = fp32
    if options.dtype != Dtype.FP32.value:
        final = work / f"{options.dtype}.onnx"
        _convert_dtype(fp32, final, options.dtype)
        converted = adapter.check_parity(model, plan, final, options.dtype)
        raise_on_failure(converted, f"the {options.dtype} conversion of {checkpoint.path}")
        parity = parity + converted

    tokenizer_dir = work / "tokenizer"
    tokenizer_dir.mkdir()
    for filename in TOKENIZER_FILES:
        if checkpoint.has(filename):
            shutil.copyfile(checkpoint.path / filename, tokenizer_dir / filename)

    manifest = build_manifest(
        adapter,
        plan,
        options,
        name,
        final,
        parity,
        optimization,
        parameter_count=_parameter_count(module),
        version=version,
        adapters=lora_specs,
    )
    try:
        write_entry(
            staging / "repository",
            manifest,
            final,
            tokenizer_dir,
            options.entry,
            adapter_files=adapter_files,
        )
    except EntryError as exc:
        raise ExportError(f"cannot lay out entry {name!r}: {exc}") from exc
    return manifest


def _read_loras(model: Any, options: ExportOptions) -> list[Any]:
    """The PEFT adapters of `--adapter`, each applied to (a copy of) the loaded base."""
    if not options.adapters:
        return []
    from shoal.exporter.lora import read_adapter

    return [read_adapter(model, name, Path(folder)) for name, folder in options.adapters]


def _export_loras(
    adapter: Adapter,
    base: Any,
    loras: list[Any],
    hf_tokenizer: Any,
    plan: ExportPlan,
    graph: Path,
    encoder: TextEncoder,
    slots: list[str],
    folder: Path,
) -> tuple[list[LoraAdapterSpec], dict[str, Path]]:
    """Each adapter's file (in `folder`) and manifest entry, once the slots are checked."""
    from shoal.exporter.lora_graph import check_slots

    check_slots(graph, slots)
    specs, files = [], {}
    for lora in loras:
        files[lora.name] = folder / f"{lora.name}.onnx_adapter"
        specs.append(
            _export_lora(
                adapter, base, lora, hf_tokenizer, plan, graph, encoder, slots, files[lora.name]
            )
        )
    return specs, files


def _export_lora(
    adapter: Adapter,
    base: Any,
    lora: Any,
    hf_tokenizer: Any,
    plan: ExportPlan,
    graph: Path,
    encoder: TextEncoder,
    slots: list[str],
    path: Path,
) -> LoraAdapterSpec:
    """Write one adapter's file and check the base graph with it active against PEFT's merged
    model (the same probes and fp32 threshold as the base)."""
    from shoal.exporter.lora import merged_model
    from shoal.exporter.lora_graph import AdapterSession, write_adapter_file
    from shoal.exporter.parity import onnx_session

    size = write_adapter_file(path, lora.tensors, slots)
    what = f"adapter {lora.name!r} ({lora.source})"
    session = AdapterSession(onnx_session(graph), path, what)
    fp32 = Dtype.FP32.value
    reference = merged_model(base, lora)
    parity = check_parity(
        adapter, reference, hf_tokenizer, plan, graph, encoder, fp32, session=session
    )
    raise_on_failure(parity, f"{what} on the exported base graph")
    log.info("adapter %s: %d bytes, parity %s", lora.name, size, [r.value for r in parity])
    return LoraAdapterSpec(
        name=lora.name,
        file=f"adapters/{lora.name}.onnx_adapter",
        source=str(lora.source.resolve()),
        rank=lora.rank,
        alpha=lora.alpha,
        target_modules=[
            m for m in lora.target_modules if any(s.startswith(f"lora.{m}.") for s in slots)
        ],
        bytes=size,
        parity=parity,
    )


def _note_unfused_attention(optimization: dict[str, Any]) -> None:
    """Say in the manifest why attention blocks stayed unfused: the optimizer's attention matcher
    wants MatMul -> Add(bias), and a LoRA slot on a projection adds to it first."""
    if optimization.get("fused_attention", 0) >= optimization.get("attention_blocks", 0):
        return
    why = "LoRA slots on attention projections keep those blocks unfused (docs/lora.md)"
    optimization["note"] = f"{optimization['note']}; {why}" if optimization.get("note") else why


def _parameter_count(module: Any) -> int:
    """Parameters of the exported module, LoRA slots aside (they are the adapters')."""
    from shoal.exporter.lora import is_slot_parameter

    return sum(p.numel() for n, p in module.named_parameters() if not is_slot_parameter(n))


def _optimize(adapter: Adapter, raw: Path, out: Path, enabled: bool) -> dict[str, Any]:
    from shoal.exporter.optimize import copy_graph, optimize_graph

    config = adapter.checkpoint.config
    if not enabled:
        copy_graph(raw, out)
        return {"fused_attention": 0, "note": "optimization disabled (--no-optimize)"}
    report = optimize_graph(
        raw,
        out,
        model_type=adapter.checkpoint.model_type,
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
    )
    return report.to_dict()


def _convert_dtype(fp32: Path, out: Path, dtype: str) -> None:
    try:
        from shoal.exporter import quantize
    except ImportError as exc:  # pragma: no cover - the optimizer helper's module
        raise ExportError(f"--dtype {dtype} needs shoal.exporter.quantize ({exc})") from exc
    if dtype == Dtype.FP16.value:
        quantize.convert_fp16(fp32, out)
    else:
        quantize.quantize_int8(fp32, out)


# ------------------------------------------------------------------ manifest


def _spec(name: str, dtype: str, dims: list[int]) -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, dims=dims)


def application_tensors(
    plan: ExportPlan, width: int | None, adapters: bool = False
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Ensemble inputs and outputs (the contract) for the plan's task (and LoRA adapters)."""
    inputs = [_spec(INPUT_TEXT, "BYTES", [1])]
    if adapters:
        inputs.append(_spec(INPUT_ADAPTER, "BYTES", [1]))
    if plan.task == Task.RERANK:
        inputs.insert(0, _spec(INPUT_QUERY, "BYTES", [1]))
    elif plan.task == Task.EXTRACT_ZERO_SHOT:  # the labels (and threshold) come per request
        inputs += [_spec(INPUT_LABELS, "BYTES", [1]), _spec(INPUT_THRESHOLD, "FP32", [1])]
    elif plan.task != Task.EXTRACT:  # entities are offsets into the text as sent: no prefixes
        inputs.append(_spec(INPUT_TEXT_TYPE, "BYTES", [1]))
    dense = _spec(OUTPUT_EMBEDDING, "FP32", [plan.dims or plan.hidden_size])
    sparse = [
        _spec(OUTPUT_SPARSE_INDICES, "INT64", [-1]),
        _spec(OUTPUT_SPARSE_VALUES, "FP32", [-1]),
    ]
    colbert = [
        _spec(OUTPUT_COLBERT_VECTORS, "FP32", [-1, width or plan.hidden_size]),
        _spec(OUTPUT_COLBERT_LENGTHS, "INT32", [1]),
    ]
    outputs = {
        Task.EMBED: [dense],
        Task.RERANK: [_spec(OUTPUT_SCORE, "FP32", [1])],
        Task.SPARSE: sparse,
        Task.COLBERT: colbert,
        Task.MULTI: [dense, *sparse, *colbert],
        Task.EXTRACT: [_spec(OUTPUT_ENTITIES, "BYTES", [1])],
        Task.EXTRACT_ZERO_SHOT: [_spec(OUTPUT_ENTITIES, "BYTES", [1])],
    }[plan.task]
    return inputs, outputs


def encoder_tensors(
    onnx_path: Path, plan: ExportPlan, adapter: Adapter
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs/outputs with the dtypes actually stored in the graph."""
    from shoal.exporter.torch_export import graph_io
    from shoal.postprocessing import (
        GRAPH_COLBERT_VECTORS,
        GRAPH_HIDDEN_STATES,
        GRAPH_LOGITS,
        GRAPH_SPARSE_WEIGHTS,
        GRAPH_TOKEN_LOGITS,
        GRAPH_TOKEN_VECTORS,
        GRAPH_TOKEN_WEIGHTS,
    )

    config = adapter.checkpoint.config
    hidden = plan.hidden_size
    labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 1)
    dims = {
        GRAPH_HIDDEN_STATES: [-1, hidden],
        GRAPH_LOGITS: [labels],
        GRAPH_TOKEN_LOGITS: [-1, labels],
        GRAPH_TOKEN_VECTORS: [-1, adapter.output_width(plan.task)],
        GRAPH_SPARSE_WEIGHTS: [int(config["vocab_size"])],
        GRAPH_TOKEN_WEIGHTS: [-1],
        GRAPH_COLBERT_VECTORS: [-1, hidden],
        **adapter.graph_output_dims(),
    }
    input_dims = adapter.graph_input_dims()
    inputs, outputs = graph_io(onnx_path)
    return (
        [_spec(n, dtype, input_dims.get(n, [-1])) for n, dtype in inputs],
        [_spec(n, dtype, dims[n]) for n, dtype in outputs],
    )


def estimate_memory(
    config: dict[str, Any], plan: ExportPlan, max_batch_size: int, dtype: str, weights_bytes: int
) -> int:
    """weights + activations of one batch at max_batch_size x max_length (docs/manifest.md):

    activations = e * B * T * (4H + I + A*T) + e * B * T * H  (+ e * B * T * V for SPLADE's MLM
    logits), e = 2 bytes for fp16 graphs, else 4 (int8 graphs keep fp32 activations)."""
    element = 2 if dtype == Dtype.FP16.value else 4
    batch, length = max_batch_size, plan.max_length
    hidden = int(config.get("hidden_size", plan.hidden_size))
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    heads = int(config.get("num_attention_heads", 1))
    per_token = 4 * hidden + intermediate + heads * length + hidden
    if plan.task == Task.SPARSE:
        per_token += int(config.get("vocab_size", 0))
    return int(weights_bytes + element * batch * length * per_token)


def build_manifest(
    adapter: Adapter,
    plan: ExportPlan,
    options: ExportOptions,
    name: str,
    onnx_path: Path,
    parity: list[ParityResult],
    optimization: dict[str, Any],
    *,
    parameter_count: int,
    version: int = 1,
    adapters: list[LoraAdapterSpec] | None = None,
) -> Manifest:
    checkpoint = adapter.checkpoint
    config = checkpoint.config
    weights_bytes = sum(
        p.stat().st_size for p in onnx_path.parent.iterdir() if p.name.startswith(onnx_path.name)
    )
    width = adapter.output_width(plan.task)
    adapters = adapters or []
    inputs, outputs = application_tensors(plan, width, bool(adapters))
    encoder_inputs, encoder_outputs = encoder_tensors(onnx_path, plan, adapter)
    dims = None
    if plan.task in (Task.EMBED, Task.MULTI):
        dims = plan.dims or plan.hidden_size
    elif plan.task == Task.COLBERT:
        dims = width
    extra = {
        "tokenization": plan.tokenization,
        "postprocessing": plan.postprocessing,
        "optimization": optimization,
        "parity_thresholds": {
            k: {"min_cosine": v.min_cosine, "max_scaled_diff": v.max_scaled_diff}
            for k, v in ((dtype, family_threshold(adapter, dtype)) for dtype in THRESHOLDS)
        },
        "hidden_size": plan.hidden_size,
        "num_layers": int(config.get("num_hidden_layers", 0)),
        "vocab_size": int(config.get("vocab_size", 0)),
        "architectures": checkpoint.architectures,
        **plan.extra,
    }
    if dims is not None and plan.task in (Task.EMBED, Task.MULTI):
        # Whether a client may ask for a prefix of the vector (router: OpenAI `dimensions`).
        extra["matryoshka"] = options.matryoshka or plan.dims is not None
    return Manifest(
        name=name,
        source=str(checkpoint.path.resolve()),
        architecture=plan.family,
        model_type=checkpoint.model_type,
        task=plan.task.value,
        pooling=plan.pooling.value if plan.pooling else None,
        normalize=plan.normalize,
        max_length=plan.max_length,
        dims=dims,
        dtype=options.dtype,
        runtime=options.runtime,
        padding_side=plan.tokenization["padding_side"],
        inputs=inputs,
        outputs=outputs,
        encoder_inputs=encoder_inputs,
        encoder_outputs=encoder_outputs,
        parameter_count=int(parameter_count),
        weights_bytes=int(weights_bytes),
        # The base once, plus each adapter (all loaded beside the one session).
        memory_bytes=estimate_memory(
            config, plan, options.max_batch_size, options.dtype, weights_bytes
        )
        + sum(a.bytes for a in adapters),
        max_batch_size=options.max_batch_size,
        fused_attention=int(optimization.get("fused_attention", 0)),
        onnx_opset=options.opset,
        sha256={},  # filled by write_entry with the copied files' hashes
        source_sha256=source_hash(
            adapters_hash(checkpoint.content_sha256(), options.adapters), options
        ),
        parity=parity,
        prefixes=plan.prefixes,
        extra=extra,
        versions=tool_versions(),
        version=version,
        adapters=adapters,
    )


# ------------------------------------------------------------------ verify


def verify_entry(entry: EntryLayout | str | Path) -> list[ParityResult]:
    """Re-run parity of an existing entry's ONNX graph against the source in its manifest."""
    from transformers import AutoTokenizer

    if not isinstance(entry, EntryLayout):
        path = Path(entry)
        entry = EntryLayout(path.parent, path.name)
    try:
        manifest = Manifest.read(entry.ensemble_dir)
    except ManifestError as exc:
        raise ExportError(str(exc)) from exc
    entry = EntryLayout(entry.repository, entry.model, manifest.version)
    if not entry.onnx_path.is_file():
        raise ExportError(f"{entry.onnx_path} not found: the entry {entry.model!r} is incomplete")
    checkpoint = inspect_checkpoint(manifest.source)
    adapter = detect_adapter(checkpoint, manifest.architecture)
    if manifest.task == Task.IMAGE_TEXT.value:  # either tower's entry
        from shoal.exporter.image_text_export import verify_image_text

        tokenizer = entry.tokenizer_dir / "tokenizer.json"
        encoder = None
        if tokenizer.is_file():
            encoder = TextEncoder.from_file(tokenizer, manifest.extra["tokenization"])
        return verify_image_text(adapter, manifest, entry.onnx_path, encoder)
    options = ExportOptions(
        task=manifest.task,
        pooling=manifest.pooling,
        normalize=manifest.normalize,
        max_length=manifest.max_length,
        dims=manifest.dims
        if manifest.task in (Task.EMBED.value, Task.MULTI.value)
        and manifest.dims != adapter.output_width(Task(manifest.task))
        else None,
        query_prefix=manifest.prefixes.get("query", ""),
        document_prefix=manifest.prefixes.get("document", ""),
    )
    plan = adapter.plan(options)
    # The entry's own settings (what its steps run) win over re-derived ones.
    plan.tokenization = manifest.extra.get("tokenization", plan.tokenization)
    plan.postprocessing = manifest.extra.get("postprocessing", plan.postprocessing)
    model = adapter.load()
    tokenizer_json = entry.tokenizer_dir / "tokenizer.json"
    results = adapter.check_parity(model, plan, entry.onnx_path, manifest.dtype, tokenizer_json)
    if not manifest.adapters:
        return results
    encoder = TextEncoder.from_file(tokenizer_json, plan.tokenization)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.path))
    return results + _verify_loras(adapter, model, hf_tokenizer, plan, entry, manifest, encoder)


def _verify_loras(
    adapter: Adapter,
    model: Any,
    hf_tokenizer: Any,
    plan: ExportPlan,
    entry: EntryLayout,
    manifest: Manifest,
    encoder: TextEncoder,
) -> list[ParityResult]:
    """Each LoRA adapter's file on the entry's graph against PEFT's merged model of its source
    folder; results named `<output>@<adapter>`."""
    if not manifest.adapters:
        return []
    from shoal.exporter.lora import merged_model, read_adapter
    from shoal.exporter.lora_graph import AdapterSession
    from shoal.exporter.parity import onnx_session

    results = []
    for spec in manifest.adapters:
        lora = read_adapter(model, spec.name, Path(spec.source))
        path = entry.onnx_path.parent / spec.file
        session = AdapterSession(onnx_session(entry.onnx_path), path, f"adapter {spec.name!r}")
        for result in check_parity(
            adapter, merged_model(model, lora), hf_tokenizer, plan, entry.onnx_path, encoder,
            manifest.dtype,
            session=session,
        ):  # fmt: skip
            result.output = f"{result.output}@{spec.name}"
            results.append(result)
    return results
