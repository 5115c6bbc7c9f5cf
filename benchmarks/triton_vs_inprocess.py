"""Question: what does serving MiniLM through Triton (ensemble, dynamic batching, portable runtime)
cost against running the same ONNX in-process with onnxruntime?

Side by side in one run, at concurrency 1, 8 and 32 (each "client" sends one text per request):
requests/s, p50/p99 latency, the Triton/in-process throughput ratio, and the encode step's batch
sizes from Triton's statistics API (batch_stats) to show the dynamic batcher forming batches > 1.
Triton is called with the gRPC asyncio client (tritonclient.http is not thread-safe).

    .venv/bin/python benchmarks/triton_vs_inprocess.py [--seconds 8] [--repository DIR]

The entry is the quickstart's (exported once into the quickstart cache repository).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from shoal.contract import STEP_ENCODE, step_name
from shoal.runtime.quickstart import MODEL_NAME, default_repository, ensure_exported
from shoal.runtime.serve import LocalServing

TEXTS = [
    "A shoal of small fish moves as one through the reef.",
    "Triton serves many small models on a few GPUs.",
    "How do I bake bread at home with flour, water, salt and yeast?",
    "Late interaction models keep one vector per token.",
    "The operator places models on pools and evicts the least recently used.",
    "What is the capital of France?",
    "Sparse encoders weigh the words of the vocabulary that matter.",
    "Embeddings turn text into vectors that can be compared by cosine similarity.",
]
CONCURRENCY = (1, 8, 32)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


# -- in-process -------------------------------------------------------------------------------
class InProcessEmbedder:
    """Tokenize (tokenizers), run the entry's ONNX (onnxruntime), mean-pool and normalize."""

    def __init__(self, repository: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        encode_dir = repository / step_name(MODEL_NAME, STEP_ENCODE) / "1"
        manifest = json.loads((repository / MODEL_NAME / "shoal.json").read_text())
        self.tokenizer = Tokenizer.from_file(
            str(
                repository
                / step_name(MODEL_NAME, "tokenize")
                / "1"
                / "tokenizer"
                / "tokenizer.json"
            )
        )
        self.tokenizer.enable_truncation(manifest["max_length"])
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(
            str(encode_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def embed(self, text: str) -> np.ndarray:
        encoding = self.tokenizer.encode(text)
        feeds = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[
            0
        ]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def run_inprocess(embedder: InProcessEmbedder, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        i = offset
        local = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            embedder.embed(TEXTS[i % len(TEXTS)])
            local.append(time.perf_counter() - started)
            i += 1
        with lock:
            latencies.extend(local)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed)


# -- Triton -----------------------------------------------------------------------------------
async def run_triton(address: str, concurrency: int, seconds: float) -> dict:
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(address)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            tensor = grpcaio.InferInput("TEXT", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[TEXTS[i % len(TEXTS)].encode()]], dtype=object))
            started = time.perf_counter()
            await client.infer(MODEL_NAME, [tensor])
            latencies.append(time.perf_counter() - started)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return summarize(latencies, elapsed)


def summarize(latencies: list[float], elapsed: float) -> dict:
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def batch_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}


async def main(args: argparse.Namespace) -> None:
    repository = Path(args.repository or default_repository())
    ensure_exported(repository)
    embedder = InProcessEmbedder(repository)
    for text in TEXTS:  # warm up
        embedder.embed(text)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{args.seconds:.0f}s per cell; model {MODEL_NAME} (one text per request)"
    )
    rows = []
    async with LocalServing(repository) as serving:
        await serving.controller.ensure_loaded(MODEL_NAME)
        address = serving.server.grpc_address
        await run_triton(address, 4, 2.0)  # warm up
        encode = step_name(MODEL_NAME, STEP_ENCODE)
        for concurrency in CONCURRENCY:
            (stats_before,) = await serving.control.statistics(encode)
            triton = await run_triton(address, concurrency, args.seconds)
            (stats_after,) = await serving.control.statistics(encode)
            inprocess = await asyncio.to_thread(run_inprocess, embedder, concurrency, args.seconds)
            batches = batch_delta(stats_before.batch_sizes, stats_after.batch_sizes)
            rows.append((concurrency, triton, inprocess, batches))
    print(
        f"{'conc':>4} | {'triton rps':>10} {'p50 ms':>8} {'p99 ms':>8} | "
        f"{'in-proc rps':>11} {'p50 ms':>8} {'p99 ms':>8} | {'ratio':>6} | encode batch sizes"
    )
    for concurrency, triton, inprocess, batches in rows:
        ratio = triton["rps"] / inprocess["rps"]
        executions = sum(batches.values())
        mean_batch = sum(k * v for k, v in batches.items()) / executions if executions else 0
        shown = ", ".join(f"{k}:{v}" for k, v in batches.items())
        print(
            f"{concurrency:>4} | {triton['rps']:>10.1f} {triton['p50_ms']:>8.1f} "
            f"{triton['p99_ms']:>8.1f} | {inprocess['rps']:>11.1f} {inprocess['p50_ms']:>8.1f} "
            f"{inprocess['p99_ms']:>8.1f} | {ratio:>5.2f}x | mean {mean_batch:.1f} ({shown})"
        )
    goal = rows[-1][1]["rps"] / rows[-1][2]["rps"]
    print(
        f"goal: Triton >= 0.8x in-process at concurrency 32: {goal:.2f}x "
        f"({'met' if goal >= 0.8 else 'NOT met'})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repository", help="default: the quickstart cache repository")
    asyncio.run(main(parser.parse_args()))
