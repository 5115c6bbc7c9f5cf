"""LoRA adapters: one base graph + adapter files (onnxruntime's LoraAdapter, what `shoal export
--adapter` writes) against the fallback, one merged graph per adapter (PEFT's merge_and_unload,
each exported as its own entry). Side by side in one run, on a small random BERT and random
PEFT adapters built here; prints memory, load time and throughput with ratios.

    .venv/bin/python benchmarks/lora_adapters.py [--adapters 4] [--hidden 256] [--layers 4]

Memory: bytes on disk (what placement counts) and the resident memory a process gains loading
the sessions (each measured in a fresh process). Load: the time to create the session(s) and
load the adapters. Throughput: texts/s encoding batches with one adapter, and batches that mix
every adapter (the adapter path groups rows by adapter: one run per adapter; the merged path runs
each adapter's rows on its own graph). Both sides run the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

THREADS = 2
TEXT = "A shoal of small fish moves as one through the reef, and the quick brown fox jumps. "


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def adapter_options(path: Path):
    import onnxruntime as ort

    adapter = ort.LoraAdapter()
    adapter.Load(str(path))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    return adapter, options


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_load(kind: str, graphs: list[str], adapters: list[str]) -> dict:
    """In a fresh process: seconds and resident bytes to load one side."""
    import onnxruntime  # noqa: F401  imported before the baseline, as a server has it

    before, started = rss_bytes(), time.perf_counter()
    sessions = [session(Path(g)) for g in graphs]
    kept = [adapter_options(Path(a)) for a in adapters]
    elapsed = time.perf_counter() - started
    assert sessions and (kind == "merged" or kept)
    return {"seconds": elapsed, "rss": rss_bytes() - before}


def load_in_subprocess(kind: str, graphs: list[Path], adapters: list[Path]) -> dict:
    payload = json.dumps({"kind": kind, "graphs": list(map(str, graphs)),
                          "adapters": list(map(str, adapters))})  # fmt: skip
    done = subprocess.run(
        [sys.executable, __file__, "--measure-load", payload],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def texts_per_second(run, rows: int, seconds: float = 3.0) -> float:
    run()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        done += rows
    return done / (time.perf_counter() - started)


def matmul_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    """The machine's fp32 matmul speed now (numpy): the ceiling beside the throughput figures."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ a
        done += 1
    return done * 2 * size**3 / (time.perf_counter() - started) / 1e9


def build(workdir: Path, count: int, hidden: int, layers: int):
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    from shoal.exporter import ExportOptions, export_model
    from tests.support.tiny_models import build_tiny_lora_adapter, build_tiny_model

    base = build_tiny_model(
        "bert", workdir / "base", hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
        max_position_embeddings=512, vocab_size=2000,
    )  # fmt: skip
    adapters = {
        f"a{i}": build_tiny_lora_adapter(base, workdir / f"a{i}", rank=8, alpha=16, seed=i + 1)
        for i in range(count)
    }
    repository = workdir / "repository"
    started = time.perf_counter()
    lora = export_model(base, "lora", repository, ExportOptions(
        max_length=128, adapters=tuple((n, str(p)) for n, p in adapters.items())))  # fmt: skip
    lora_export = time.perf_counter() - started
    merged = {}
    started = time.perf_counter()
    for name, path in adapters.items():
        model = AutoModel.from_pretrained(str(base), dtype=torch.float32)
        folder = workdir / f"merged-{name}"
        PeftModel.from_pretrained(model, str(path)).merge_and_unload().save_pretrained(folder)
        for tokenizer_file in base.glob("*token*"):
            shutil.copy(tokenizer_file, folder / tokenizer_file.name)
        merged[name] = export_model(folder, f"merged-{name}", repository,
                                    ExportOptions(max_length=128))  # fmt: skip
    merged_export = time.perf_counter() - started
    return repository, lora, merged, lora_export, merged_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_load:
        payload = json.loads(args.measure_load)
        print(json.dumps(measure_load(payload["kind"], payload["graphs"], payload["adapters"])))
        return

    import numpy as np

    from shoal.model_repository.layout import EntryLayout
    from shoal.tokenization import TextEncoder

    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-lora-"))
    try:
        repository, lora, merged, lora_export, merged_export = build(
            workdir, args.adapters, args.hidden, args.layers
        )
        layout = EntryLayout(repository, "lora", lora.version)
        adapter_files = [layout.onnx_path.parent / a.file for a in lora.adapters]
        merged_graphs = {n: EntryLayout(repository, m.name, m.version).onnx_path
                         for n, m in merged.items()}  # fmt: skip

        disk_lora = lora.weights_bytes + sum(a.bytes for a in lora.adapters)
        disk_merged = sum(m.weights_bytes for m in merged.values())
        placement_lora = lora.memory_bytes
        placement_merged = sum(m.memory_bytes for m in merged.values())
        load_lora = load_in_subprocess("lora", [layout.onnx_path], adapter_files)
        load_merged = load_in_subprocess("merged", list(merged_graphs.values()), [])

        encoder = TextEncoder.from_file(
            layout.tokenizer_dir / "tokenizer.json", lora.extra["tokenization"]
        )
        tokens = encoder.encode([TEXT * (1 + i % 3) for i in range(args.batch)])
        base_session = session(layout.onnx_path)
        feed = {i.name: tokens[i.name] for i in base_session.get_inputs()}
        kept = [adapter_options(f) for f in adapter_files]
        merged_sessions = [session(g) for g in merged_graphs.values()]
        groups = np.array_split(np.arange(args.batch), len(kept))

        def mixed_lora() -> None:
            for rows, (_, options) in zip(groups, kept, strict=True):
                base_session.run(None, {k: v[rows] for k, v in feed.items()}, options)

        def mixed_merged() -> None:
            for rows, merged_session in zip(groups, merged_sessions, strict=True):
                merged_session.run(None, {k: v[rows] for k, v in feed.items()})

        runs = {
            "one_lora": lambda: base_session.run(None, feed, kept[0][1]),
            "one_merged": lambda: merged_sessions[0].run(None, feed),
            "no_adapter": lambda: base_session.run(None, feed),
            "mix_lora": mixed_lora,
            "mix_merged": mixed_merged,
        }
        # Interleaved rounds, best of each: the machine is shared and noisy.
        speed = {name: 0.0 for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                speed[name] = max(speed[name], texts_per_second(run, args.batch, 1.5))
        ceiling = matmul_gflops()
        one_lora, one_merged, no_adapter = (
            speed["one_lora"],
            speed["one_merged"],
            speed["no_adapter"],
        )
        mix_lora, mix_merged = speed["mix_lora"], speed["mix_merged"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    mib = 2**20
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, onnxruntime {THREADS} threads; "
          f"fp32 matmul now {ceiling:.0f} GFLOP/s (shared machine: throughput is noisy)")  # fmt: skip
    print(f"model: random BERT hidden {args.hidden}, {args.layers} layers; {args.adapters} "
          f"LoRA adapters rank 8 on query/value; batch {args.batch} x "
          f"{tokens['input_ids'].shape[1]} tokens")  # fmt: skip
    print(f"fused attention blocks: base with slots {lora.fused_attention}, merged graph "
          f"{next(iter(merged.values())).fused_attention}")  # fmt: skip
    rows = [
        ("disk bytes (MiB)", disk_lora / mib, disk_merged / mib),
        ("placement memory_bytes (MiB)", placement_lora / mib, placement_merged / mib),
        ("resident memory on load (MiB)", load_lora["rss"] / mib, load_merged["rss"] / mib),
        ("load time (s)", load_lora["seconds"], load_merged["seconds"]),
        ("export time (s)", lora_export, merged_export),
        ("texts/s, one adapter", one_lora, one_merged),
        ("texts/s, batch mixing every adapter", mix_lora, mix_merged),
    ]
    print(f"{'':40} {'base+adapters':>14} {'merged graphs':>14} {'ratio':>8}")
    for label, a, b in rows:
        print(f"{label:40} {a:14.3f} {b:14.3f} {a / b if b else float('nan'):8.3f}")
    print(f"texts/s of the slotted base with no adapter active: {no_adapter:.1f} "
          f"({no_adapter / one_merged:.3f} x a merged graph)")  # fmt: skip


if __name__ == "__main__":
    main()
