"""Question: how close does the Triton path (ensemble: tokenize, encode, postprocess steps) come to
what this machine can compute, and where does the rest of the CPU go?

One run, side by side: the MiniLM entries (fp32 and int8, portable runtime) served by one Triton,
called with plain HTTP clients (tritonclient.http.aio) on four workloads:
  c1      1 sentence per request, concurrency 1
  c8      1 sentence per request, concurrency 8
  c32     1 sentence per request, concurrency 32
  b32c4   32 sentences per request, concurrency 4
and the fp32 ceiling measured in the same run: a 2048x2048 torch matmul on every core (after each
cell; the best rate seen so far counts, as the machine's own) gives the machine's GFLOP/s, divided by MiniLM's FLOPs for the workload's sentences (their real token
counts, no padding). Each figure is printed as a ratio to it.

The runtime's own bound is measured too: the same graphs run by onnxruntime in this process with
the encode step's session settings, in batches of 32 sentences of one length (no serving, no
padding). The gap between it and the ceiling is onnxruntime's; between the Triton path and it,
the serving path's.

Because the machines are shared, each figure also has a CPU-time form that other load disturbs
less: the serving path's CPU ms per sentence (core + the three stubs) against the ideal (the
sentence's FLOPs at the GEMM rate of one core), and "eff" = ideal / path.

The profile says where CPU time goes per sentence, from /proc (utime + stime) of each process:
Triton's core (HTTP, ensemble scheduling, batcher), each python stub (tokenize, encode,
postprocess), the client (this process) and everything else on the machine (noise). The encode
step's own metrics (`shoal_encode_*` on Triton's metrics port) split the encode stub into
onnxruntime compute and the rest, and give the padding waste (padded tokens / real tokens).

Entry variants (`--variants`) are the same exported graph written with different serving options
(EntryOptions), so each change is measured on its own in the same run; every variant's embeddings
are compared with the first variant's (min cosine) and the int8 entry's with fp32's.

    .venv/bin/python benchmarks/triton_path.py [--seconds 8] [--variants baseline,...]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from shoal.contract import STEP_ENCODE, STEP_POSTPROCESS, STEP_TOKENIZE, step_name
from shoal.manifest import Manifest
from shoal.model_repository.entry import EntryOptions, write_entry
from shoal.model_repository.layout import EntryLayout
from shoal.runtime.quickstart import minilm_source
from shoal.runtime.serve import LocalServing

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "shoal" / "bench-triton"
DTYPES = ("fp32", "int8")
WORKLOADS = {  # name: (sentences per request, concurrency)
    "c1": (1, 1),
    "c8": (1, 8),
    "c32": (1, 32),
    "b32c4": (32, 4),
}
# Serving options per variant: each changes one thing against "baseline" (today's defaults).
VARIANTS: dict[str, EntryOptions] = {
    # before this benchmark: spinning onnxruntime threads, one padded run per batch
    "baseline": EntryOptions(runtime="portable", encode_spinning=True, length_slack=-1),
    "no-spin": EntryOptions(runtime="portable", encode_spinning=False, length_slack=-1),
    "length": EntryOptions(runtime="portable", encode_spinning=True),
    "defaults": EntryOptions(runtime="portable"),  # today's defaults: both of the above
    # the defaults with the dynamic batcher waiting 2 ms (not 0.5) for more requests to join
    "delay-2ms": EntryOptions(runtime="portable", max_queue_delay_microseconds=2000),
    # two encode instances of one onnxruntime thread each (a throughput setting: each request's
    # own run is single-threaded)
    "2-instances": EntryOptions(runtime="portable", instance_count=2, encode_threads=1),
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- entries ----------------------------------------------------------------------------------
def exported(dtype: str) -> Path:
    """The MiniLM entry of `dtype`, exported (with its parity check) once into the cache."""
    from shoal.exporter import ExportOptions, export_model
    from shoal.model_repository.repository import check_entry

    repository = CACHE / "exported"
    name = f"minilm-{dtype}"
    repository.mkdir(parents=True, exist_ok=True)
    if (repository / name).exists() and not check_entry(repository, name).problems:
        return repository / name
    export_model(
        minilm_source(),
        name,
        repository,
        ExportOptions(runtime="portable", dtype=dtype, overwrite=True),
    )
    return repository / name


def write_variant(source_entry: Path, repository: Path, name: str, options: EntryOptions) -> None:
    """The exported entry's graph, tokenizer and manifest written again under `name` with the
    variant's serving options (write_entry hashes the new files)."""
    manifest = Manifest.read(source_entry)
    source = EntryLayout(source_entry.parent, manifest.name, manifest.version)
    renamed = dataclasses.replace(manifest, name=name)
    write_entry(repository, renamed, source.onnx_path, source.tokenizer_dir, options)


# -- the ceiling --------------------------------------------------------------------------------
def gemm_gflops(seconds: float = 1.5) -> float:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * 2048**3 * runs / (time.perf_counter() - started) / 1e9


def sentence_gflop(token_counts: list[int], config: dict) -> float:
    """MiniLM's forward FLOPs per sentence (mean over `token_counts`, unpadded): per layer the
    QKV/output projections and the feed-forward (2*T*(4h^2 + 2hi)) plus attention (4*T^2*h)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    flops = [layers * (2 * t * (4 * h * h + 2 * h * i) + 4 * t * t * h) for t in token_counts]
    return float(np.mean(flops)) / 1e9


def onnxruntime_alone(entry: Path, tokenizer, sentences: list[str], seconds: float) -> float:
    """Sentences/s of the entry's graph run in this process, no serving at all: onnxruntime with
    the encode step's session settings (its default threads, no spinning), batches of 32
    sentences of one length (no padding), so the same FLOPs per sentence as the ceiling's. No serving path can beat it: it
    is the runtime's own bound, against which the ceiling's gap splits into the runtime's and
    the serving path's."""
    import onnxruntime as ort

    manifest = Manifest.read(entry)
    layout = EntryLayout(entry.parent, manifest.name, manifest.version)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(layout.onnx_path), options, ["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    # 16 copies of each sentence, sorted: every batch of 32 holds rows of (almost) one length
    ordered = sorted(sentences * 16, key=lambda s: len(tokenizer.encode(s).ids))
    batches = []
    for start in range(0, len(ordered), 32):
        encodings = tokenizer.encode_batch(ordered[start : start + 32])
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        batches.append({k: v for k, v in feed.items() if k in names})
    session.run(None, batches[0])  # warm up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for feed in batches:
            session.run(None, feed)
            done += len(feed["input_ids"])
    return done / (time.perf_counter() - started)


# -- CPU accounting -----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def stub_owner(pid: int, repository: Path) -> str:
    """The Triton model a python stub runs (its argv names the model's file)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    root = str(repository.resolve()).encode()
    for arg in argv:
        if root in arg:
            return Path(arg.decode()).resolve().relative_to(repository.resolve()).parts[0]
    return "?"


def cpu_snapshot(serving: LocalServing, repository: Path) -> dict[str, float]:
    assert serving.server is not None and serving.server.pid is not None
    snapshot = {"triton core": cpu_seconds(serving.server.pid), "client": cpu_seconds(os.getpid())}
    for pid in serving.server.stub_pids():
        try:
            owner = stub_owner(pid, repository)
            snapshot[owner] = snapshot.get(owner, 0.0) + cpu_seconds(pid)
        except (OSError, ValueError):
            continue
    snapshot["machine"] = machine_busy_seconds()
    return snapshot


def encode_metrics(serving: LocalServing) -> dict[tuple[str, str], float]:
    """shoal_encode_* counters from Triton's metrics port: {(metric, model): value}."""
    import httpx

    assert serving.server is not None
    values: dict[tuple[str, str], float] = {}
    for line in httpx.get(serving.server.metrics_url, timeout=5).text.splitlines():
        if not line.startswith("shoal_encode_"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        model = labels.split('model="', 1)[1].split('"', 1)[0] if 'model="' in labels else "?"
        values[(name, model)] = float(value)
    return values


# -- load -----------------------------------------------------------------------------------
async def drive(
    address: str, model: str, texts: list[str], per_request: int, concurrency: int, seconds: float
) -> dict:
    import tritonclient.http.aio as httpaio

    client = httpaio.InferenceServerClient(address, conn_limit=concurrency)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        i = offset * per_request
        while time.perf_counter() < deadline:
            rows = [texts[(i + k) % len(texts)].encode() for k in range(per_request)]
            tensor = httpaio.InferInput("TEXT", [per_request, 1], "BYTES")
            tensor.set_data_from_numpy(np.array(rows, dtype=object).reshape(-1, 1))
            started = time.perf_counter()
            await client.infer(model, [tensor])
            latencies.append(time.perf_counter() - started)
            i += per_request * concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {
        "elapsed": elapsed,
        "sentences": len(latencies) * per_request,
        "sent_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
    }


async def embed_all(address: str, model: str, texts: list[str]) -> np.ndarray:
    import tritonclient.http.aio as httpaio

    client = httpaio.InferenceServerClient(address)
    try:
        tensor = httpaio.InferInput("TEXT", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object)[:, None])
        result = await client.infer(model, [tensor])
        return result.as_numpy("EMBEDDING")
    finally:
        await client.close()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


# -- report ---------------------------------------------------------------------------------
def profile_row(before: dict, after: dict, sentences: int, model: str) -> dict[str, float]:
    """CPU milliseconds per sentence by component."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    parts = {
        "core": delta["triton core"],
        "tokenize": delta.get(step_name(model, STEP_TOKENIZE), 0.0),
        "encode": delta.get(step_name(model, STEP_ENCODE), 0.0),
        "postproc": delta.get(step_name(model, STEP_POSTPROCESS), 0.0),
        "client": delta["client"],
    }
    parts["other"] = max(0.0, delta["machine"] - sum(parts.values()))
    return {k: v * 1000 / max(1, sentences) for k, v in parts.items()}


def encode_split(before: dict, after: dict, model: str, sentences: int) -> dict[str, float]:
    encode = step_name(model, STEP_ENCODE)

    def delta(metric: str) -> float:
        return after.get((metric, encode), 0.0) - before.get((metric, encode), 0.0)

    real = delta("shoal_encode_real_tokens_total")
    padded = delta("shoal_encode_padded_tokens_total")
    return {
        "ort_ms": delta("shoal_encode_run_seconds_total") * 1000 / max(1, sentences),
        "padding": (padded / real) if real else float("nan"),
    }


async def main(args: argparse.Namespace) -> None:
    from tokenizers import Tokenizer

    sentences = list(_sentences())
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not set(dtypes) <= set(DTYPES) or "fp32" not in dtypes:
        raise SystemExit(f"--dtypes: fp32 and any of {DTYPES}")
    sources = {dtype: exported(dtype) for dtype in dtypes}
    repository = CACHE / "variants"
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    models = []
    for dtype in dtypes:
        for variant in variants:
            name = f"minilm-{dtype}-{variant}"
            write_variant(sources[dtype], repository, name, VARIANTS[variant])
            models.append((dtype, variant, name))

    config = json.loads((minilm_source() / "config.json").read_text())
    fp32_manifest = Manifest.read(sources["fp32"])
    layout = EntryLayout(sources["fp32"].parent, fp32_manifest.name, fp32_manifest.version)
    tokenizer = Tokenizer.from_file(str(layout.tokenizer_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    token_counts = [len(tokenizer.encode(s).ids) for s in sentences]
    gflop = sentence_gflop(token_counts, config)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{len(sentences)} sentences, mean {np.mean(token_counts):.1f} tokens "
        f"({min(token_counts)}-{max(token_counts)}), {gflop:.3f} GFLOP each; "
        f"{args.seconds:.0f} s per cell"
    )
    rows = []
    best_gflops = gemm_gflops()
    alone = {dtype: onnxruntime_alone(sources[dtype], tokenizer, sentences, args.seconds)
             for dtype in dtypes}  # fmt: skip
    async with LocalServing(repository, budget_bytes=64 << 30) as serving:
        assert serving.server is not None and serving.controller is not None
        address = serving.server.http_address
        reference = None
        for dtype, variant, model in models:
            await serving.controller.ensure_loaded(model)
            embeddings = await embed_all(address, model, sentences)
            reference = embeddings if reference is None else reference
            cosine = min_cosine(embeddings, reference)
            await drive(address, model, sentences, 1, 8, 1.5)  # warm up
            for workload, (per_request, concurrency) in WORKLOADS.items():
                cpu_before, metrics_before = (
                    cpu_snapshot(serving, repository),
                    encode_metrics(serving),
                )
                result = await drive(
                    address, model, sentences, per_request, concurrency, args.seconds
                )
                cpu_after, metrics_after = (
                    cpu_snapshot(serving, repository),
                    encode_metrics(serving),
                )
                best_gflops = max(best_gflops, gemm_gflops())
                gflops = best_gflops  # the machine's rate: the best seen in this run
                rows.append(
                    {
                        "model": model,
                        "dtype": dtype,
                        "variant": variant,
                        "workload": workload,
                        "ceiling": gflops / gflop,
                        # CPU ms per sentence of the model's FLOPs at the GEMM rate of one core
                        "ideal_ms": gflop / (gflops / (os.cpu_count() or 1)) * 1000,
                        "cosine": cosine,
                        **result,
                        "profile": profile_row(cpu_before, cpu_after, result["sentences"], model),
                        "encode": encode_split(
                            metrics_before, metrics_after, model, result["sentences"]
                        ),
                    }
                )
                print_row(rows[-1])
    # Measured again at the end: as for the GEMM ceiling, the best rate of the run counts (a
    # shared machine only ever slows a measurement down).
    for dtype in dtypes:
        again = onnxruntime_alone(sources[dtype], tokenizer, sentences, args.seconds)
        alone[dtype] = max(alone[dtype], again)
        print(f"onnxruntime alone, {dtype}: {alone[dtype]:.1f} sent/s = "
              f"{alone[dtype] / (best_gflops / gflop):.2f}x ceiling (batches of 32 of one "
              f"length; the better of the run's first and last measurement)")  # fmt: skip
    print_summary(rows, alone)


def _sentences() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sentences import SENTENCES

    return list(SENTENCES)


HEADER = (
    f"{'dtype':<5} {'variant':<12} {'load':<6} | {'sent/s':>7} {'x ceil':>6} {'p50 ms':>7} "
    f"{'p99 ms':>7} | CPU ms/sentence: {'core':>5} {'tok':>5} {'enc':>5} ({'ort':>5}) "
    f"{'post':>5} {'client':>6} {'other':>5} | {'path':>5} {'eff':>4} | {'pad':>4} | cos"
)


def print_row(row: dict) -> None:
    if not getattr(print_row, "header_shown", False):
        print(HEADER)
        print_row.header_shown = True  # type: ignore[attr-defined]
    p, e = row["profile"], row["encode"]
    path = path_ms(p)
    print(
        f"{row['dtype']:<5} {row['variant']:<12} {row['workload']:<6} | {row['sent_per_s']:>7.1f} "
        f"{row['sent_per_s'] / row['ceiling']:>5.2f}x {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
        f"| {'':16} {p['core']:>5.2f} {p['tokenize']:>5.2f} {p['encode']:>5.2f} "
        f"({e['ort_ms']:>5.2f}) {p['postproc']:>5.2f} {p['client']:>6.2f} {p['other']:>5.2f} "
        f"| {path:>5.2f} {row['ideal_ms'] / path:>4.2f} | {e['padding']:>4.2f} | "
        f"{row['cosine']:.5f}",
        flush=True,
    )


def path_ms(profile: dict[str, float]) -> float:
    """CPU ms per sentence of the serving path (Triton's core and the three steps)."""
    return profile["core"] + profile["tokenize"] + profile["encode"] + profile["postproc"]


def print_summary(rows: list[dict], alone: dict[str, float]) -> None:
    print("\nsummary (ratios in the same run; 'alone': onnxruntime in-process, no serving):")
    by_key = {(r["dtype"], r["variant"], r["workload"]): r for r in rows}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for variant in variants:
        for workload in WORKLOADS:
            fp32 = by_key.get(("fp32", variant, workload))
            int8 = by_key.get(("int8", variant, workload))
            if fp32 is None:
                continue
            base = by_key.get(("fp32", variants[0], workload))
            parts = [
                f"{variant:<12} {workload:<6} fp32 {fp32['sent_per_s']:6.1f} sent/s = "
                f"{fp32['sent_per_s'] / fp32['ceiling']:.2f}x ceiling, path CPU "
                f"{path_ms(fp32['profile']):.2f} ms/sentence = "
                f"{fp32['ideal_ms'] / path_ms(fp32['profile']):.2f}x ideal"
            ]
            if base is not None and variant != variants[0]:
                parts.append(
                    f"{fp32['sent_per_s'] / base['sent_per_s']:.2f}x {variants[0]}'s throughput, "
                    f"{path_ms(base['profile']) / path_ms(fp32['profile']):.2f}x its CPU efficiency"
                )
            parts.append(f"{fp32['sent_per_s'] / alone['fp32']:.2f}x alone")
            if int8 is not None:
                parts.append(
                    f"int8 {int8['sent_per_s'] / fp32['sent_per_s']:.2f}x fp32, "
                    f"{int8['sent_per_s'] / alone['int8']:.2f}x int8 alone"
                )
            print("  " + "; ".join(parts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated")
    asyncio.run(main(parser.parse_args()))
