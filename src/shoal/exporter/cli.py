"""`shoal export` and `shoal verify`: thin wrappers over shoal.exporter (imported lazily so that
`shoal --help` and the operator image never load torch)."""

from __future__ import annotations

import argparse
import logging

from shoal.contract import Aggregation, Dtype, Pooling, Runtime, Task
from shoal.exporter.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_OPSET
from shoal.exporter.options import SCORE_RAW, SCORES
from shoal.model_repository.entry import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    EntryOptions,
    GpuAccelerator,
    InstanceKind,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this component's subcommands to `shoal`."""
    export = subparsers.add_parser(
        "export", help="export a Hugging Face checkpoint to a verified Triton repository entry"
    )
    export.add_argument("source", help="local Hugging Face model folder")
    export.add_argument("--name", required=True, help="model name in the repository")
    export.add_argument("--repository", required=True, help="Triton model repository folder")
    export.add_argument(
        "--task", choices=[t.value for t in Task], help="default: from the architecture"
    )
    export.add_argument(
        "--pooling",
        choices=[p.value for p in Pooling],
        help="dense pooling; default: the checkpoint's sentence-transformers setting or the family's",
    )
    export.add_argument(
        "--aggregation",
        choices=[a.value for a in Aggregation],
        help="task extract: how token labels join into entities, as transformers' "
        "token-classification pipeline (default: simple)",
    )
    export.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalize dense vectors (default: as the checkpoint does)",
    )
    export.add_argument(
        "--max-length",
        type=int,
        help="tokens per text, longer texts are truncated (default: the checkpoint's "
        "sentence-transformers max_seq_length, else its tokenizer's and position limit)",
    )
    export.add_argument(
        "--dims", type=int, help="Matryoshka truncation of dense vectors (default: all dims)"
    )
    export.add_argument(
        "--score",
        choices=SCORES,
        default=SCORE_RAW,
        help="rerankers: SCORE is the raw first logit, or its sigmoid (0..1, what "
        "sentence-transformers' CrossEncoder and TEI return)",
    )
    export.add_argument(
        "--matryoshka",
        action="store_true",
        help="the model was trained with a Matryoshka loss: clients may ask for fewer "
        "dimensions (the router's OpenAI `dimensions`); implied by --dims",
    )
    export.add_argument(
        "--dtype",
        choices=[d.value for d in Dtype],
        default=Dtype.FP32.value,
        help="fp16 for GPU pools, int8 (dynamic quantization) for CPU pools",
    )
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (14-21)")
    export.add_argument(
        "--runtime",
        choices=[r.value for r in Runtime],
        default=Runtime.PORTABLE.value,
        help="onnxruntime: Triton's onnxruntime backend (NVIDIA images); "
        "portable: the same ONNX in a python-backend model",
    )
    export.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="texts per request (Triton max_batch_size)",
    )
    export.add_argument(
        "--device",
        choices=[k.value for k in InstanceKind],
        default=InstanceKind.CPU.value,
        help="where Triton runs the encode step (its instance group kind); gpu for GPU pools "
        "(default: cpu)",
    )
    export.add_argument(
        "--accelerator",
        choices=[a.value for a in GpuAccelerator],
        help="with --runtime onnxruntime --device gpu: onnxruntime's execution provider, "
        "tensorrt (an engine built at load, fp16 kernels allowed) or cuda (no engine build: "
        "faster loads and hot swaps); see docs/gpu.md (default: tensorrt)",
    )
    export.add_argument(
        "--instances",
        type=int,
        default=1,
        help="encode-step instances per replica (Triton instance group count) (default: 1)",
    )
    export.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="image-text models: an image whose header declares more pixels is refused before "
        "it is decoded (decompression bombs) (default: %(default)s)",
    )
    export.add_argument(
        "--max-image-bytes",
        type=int,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="image-text models: the largest image file accepted (default: %(default)s)",
    )
    export.add_argument(
        "--instruction",
        help="LLM rerankers (a *ForCausalLM with --task rerank): the prompt's <Instruct> line "
        "(default: the Qwen3-Reranker model card's web-search instruction)",
    )
    export.add_argument(
        "--prompt-prefix",
        help="LLM rerankers: the text before <Instruct>..., never truncated (default: "
        'Qwen3-Reranker\'s system turn asking for "yes" or "no", then the user turn\'s start)',
    )
    export.add_argument(
        "--prompt-suffix",
        help="LLM rerankers: the text after the document, never truncated; the score is read "
        "at its last token (default: Qwen3-Reranker's end of the user turn and an assistant "
        "turn opened with an empty think block)",
    )
    export.add_argument("--query-prefix", help="text put before queries (TEXT_TYPE=query)")
    export.add_argument("--document-prefix", help="text put before documents")
    export.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a PEFT LoRA adapter folder (adapter_config.json + weights) exported with the base "
        "as a small file; requests name it in the ADAPTER input (repeat for more; "
        "docs/lora.md)",
    )
    export.add_argument("--family", help="force an architecture adapter instead of detecting it")
    export.add_argument("--overwrite", action="store_true", help="replace an existing entry")
    export.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="skip onnxruntime's transformer optimizer (no fused attention)",
    )
    export.set_defaults(func=run_export)

    verify = subparsers.add_parser("verify", help="re-run the parity check of an exported entry")
    verify.add_argument("entry", help="REPOSITORY/NAME")
    verify.set_defaults(func=run_verify)


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shoal.errors import UserError, local_folder_problem
    from shoal.exporter import ExportError, ExportOptions, export_model
    from shoal.exporter.parity import format_table
    from shoal.model_repository.install import sigterm_as_interrupt

    problem = local_folder_problem(args.repository, "--repository", must_exist=False)
    if problem:
        raise UserError(problem)
    try:
        options = ExportOptions(
            task=args.task,
            pooling=args.pooling,
            normalize=args.normalize,
            max_length=args.max_length,
            dims=args.dims,
            matryoshka=args.matryoshka,
            score=args.score,
            dtype=args.dtype,
            opset=args.opset,
            runtime=args.runtime,
            max_batch_size=args.max_batch_size,
            query_prefix=args.query_prefix,
            document_prefix=args.document_prefix,
            aggregation=args.aggregation,
            instruction=args.instruction,
            prompt_prefix=args.prompt_prefix,
            prompt_suffix=args.prompt_suffix,
            family=args.family,
            adapters=parse_adapters(args.adapters),
            overwrite=args.overwrite,
            optimize=args.optimize,
            entry=serving_options(args),
        )
        with sigterm_as_interrupt():  # SIGTERM cleans up as Ctrl-C does
            manifest = export_model(args.source, args.name, Path(args.repository), options)
    except (ExportError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    manifests = [manifest]
    if "image_entry" in manifest.extra:  # image-text: the image tower's entry was written too
        from shoal.manifest import Manifest

        manifests.append(Manifest.read(Path(args.repository) / manifest.extra["image_entry"]))
    for written in manifests:
        print(
            f"exported {written.name}: {written.architecture} {written.task}, {written.dtype}, "
            f"fused attention {written.fused_attention}, "
            f"memory {written.memory_bytes / 2**20:.1f} MiB"
        )
        print(format_table(written.parity))
    return 0


def parse_adapters(values: list[str]) -> tuple[tuple[str, str], ...]:
    """`--adapter NAME=PATH` values as (name, folder) pairs; ValueError names a bad one."""
    from pathlib import Path

    pairs = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise ValueError(
                f"--adapter {value!r} is not NAME=PATH; e.g. --adapter legal=./adapters/legal"
            )
        if not Path(folder).is_dir():
            raise ValueError(
                f"--adapter {value}: {folder} is not a folder; give the folder PEFT's "
                "save_pretrained wrote (adapter_config.json, adapter_model.safetensors)"
            )
        pairs.append((name, folder))
    return tuple(pairs)


def serving_options(args: argparse.Namespace) -> EntryOptions:
    """How Triton serves the entry, from --device/--accelerator/--instances: the same
    EntryOptions fields (and checks) as a catalog's `instance_kind`, `gpu_accelerator` and
    `instance_count` keys. ValueError for a combination that would be silently ignored."""
    if args.instances < 1:
        raise ValueError(f"--instances must be at least 1, got {args.instances}")
    if args.accelerator is not None:
        if args.device != InstanceKind.GPU.value:
            raise ValueError(
                f"--accelerator {args.accelerator} applies to GPU instances: add --device gpu"
            )
        if args.runtime != Runtime.ONNXRUNTIME.value:
            raise ValueError(
                f"--accelerator {args.accelerator} is an onnxruntime-backend setting: add "
                "--runtime onnxruntime (the portable runtime uses CUDA on GPU instances by itself)"
            )
    for flag in ("max_image_pixels", "max_image_bytes"):
        if getattr(args, flag) < 1:
            option = "--" + flag.replace("_", "-")
            raise ValueError(f"{option} must be at least 1, got {getattr(args, flag)}")
    return EntryOptions(
        instance_kind=InstanceKind(args.device),
        gpu_accelerator=GpuAccelerator(args.accelerator or GpuAccelerator.TENSORRT.value),
        instance_count=args.instances,
        max_image_pixels=args.max_image_pixels,
        max_image_bytes=args.max_image_bytes,
    )


def run_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shoal.errors import UserError, local_folder_problem
    from shoal.exporter import ExportError, verify_entry
    from shoal.exporter.parity import format_table

    problem = local_folder_problem(args.entry, "entry", must_exist=True)
    if problem:
        raise UserError(problem)
    try:
        results = verify_entry(Path(args.entry))
    except ExportError as exc:
        raise UserError(str(exc)) from exc
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"{len(failed)} output(s) failed parity")
        return 1
    return 0
