"""Question: in `shoal serve`'s local mode, how long does a client wait for the first answer of a
model that was evicted, against Triton's own reload of it, measured in the same run?

Two MiniLM entries (all-MiniLM-L6-v2, portable runtime), a memory budget for one of them, the
router in front (as `shoal serve` runs it). Each step brings back the evicted entry (evicting the
other), alternating the two ways (direct, router, router, direct, ...):
- direct: `ensure_loaded` through the serve controller (Triton's reload: evict, wait until the
  memory is released, load the encode step), then one request straight to Triton (the first
  inference of a fresh load is Triton's cost too);
- router: one request through the router for the evicted entry: held, the entry loaded, the
  request dispatched and answered (no client retry).
Printed: medians, the router's time against reload and against reload + first answer, and the
goal (reload + 50 ms, and at most 2 s on this CPU).

    .venv/bin/python benchmarks/router_cold_start.py [--rounds 5] [--repository DIR]

The entries are exported once into the repository (default: shoal's cache) and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import tritonclient.http.aio as httpaio

from shoal.exporter import ExportOptions, export_model
from shoal.manifest import Manifest
from shoal.model_repository.repository import check_entry
from shoal.router.settings import RouterSettings
from shoal.runtime.installation import cache_dir
from shoal.runtime.quickstart import minilm_source
from shoal.runtime.serve import LocalServing

NAMES = ("minilm-a", "minilm-b")
TEXT = "A shoal of small fish moves as one through the reef."


def ensure_entries(repository: Path) -> list[Manifest]:
    """The two entries, exported once; again when shoal's entry layout has moved on since."""
    repository.mkdir(parents=True, exist_ok=True)
    manifests = []
    for name in NAMES:
        if (repository / name).exists() and not check_entry(repository, name).problems:
            manifests.append(Manifest.read(repository / name))
            continue
        print(f"exporting {name} into {repository} ...", flush=True)
        options = ExportOptions(runtime="portable", overwrite=True)
        manifests.append(export_model(minilm_source(), name, repository, options))
    return manifests


async def embed(address: str, model: str) -> np.ndarray:
    client = httpaio.InferenceServerClient(address, conn_timeout=120)
    try:
        tensor = httpaio.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[TEXT.encode()]], dtype=object))
        return (await client.infer(model, [tensor])).as_numpy("EMBEDDING")
    finally:
        await client.close()


async def measure(repository: Path, rounds: int) -> dict[str, list[float]]:
    manifests = ensure_entries(repository)
    budget = int(max(m.memory_bytes for m in manifests) * 1.5)
    settings = RouterSettings(host="127.0.0.1", http_port=0, grpc_port=None, metrics_port=None)
    figures: dict[str, list[float]] = {"reload": [], "direct": [], "router": []}
    async with LocalServing(repository, budget_bytes=budget, router=settings) as serving:
        controller, triton, router = serving.controller, serving.server, serving.router
        await controller.start(load=[NAMES[0]])
        await controller.ensure_loaded(NAMES[1])  # both loaded once: later loads are hot swaps
        # Each step brings back the entry evicted by the step before; the way alternates
        # direct, router, router, direct, ... so neither way always goes first.
        for step in range(2 * rounds):
            name, other = NAMES[step % 2], NAMES[1 - step % 2]
            started = time.monotonic()
            if step % 4 in (1, 2):
                await embed(router.http_address, name)
                figures["router"].append(time.monotonic() - started)
            else:
                await controller.ensure_loaded(name)
                figures["reload"].append(time.monotonic() - started)
                await embed(triton.http_address, name)
                figures["direct"].append(time.monotonic() - started)
            assert controller.entries[name].ready and not controller.entries[other].ready
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repository", type=Path, default=cache_dir() / "router-cold-start")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.repository, args.rounds))
    median = {k: statistics.median(v) for k, v in figures.items()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"MiniLM x2, budget for one, {args.rounds} rounds (median, all in seconds)")
    for key, label in (
        ("reload", "Triton's reload (evict, release, load encode step)"),
        ("direct", "reload + first answer straight from Triton"),
        ("router", "first answer through the router (held, loaded, dispatched)"),
    ):
        values = ", ".join(f"{v:.2f}" for v in figures[key])
        print(f"  {label:62s} {median[key]:6.3f}   [{values}]")
    added_reload = median["router"] - median["reload"]
    added_direct = median["router"] - median["direct"]
    print(
        f"router - reload: {added_reload * 1000:+.0f} ms; router - (reload + first answer): "
        f"{added_direct * 1000:+.0f} ms; router / direct: {median['router'] / median['direct']:.3f}"
    )
    print(
        f"goal reload + 50 ms: {'met' if added_reload <= 0.050 else 'not met'} against the reload "
        f"alone, {'met' if added_direct <= 0.050 else 'not met'} against reload + Triton's own "
        f"first answer; goal <= 2 s: {'met' if median['router'] <= 2.0 else 'not met'} "
        f"(Triton's reload alone: {median['reload']:.2f} s)"
    )


if __name__ == "__main__":
    main()
