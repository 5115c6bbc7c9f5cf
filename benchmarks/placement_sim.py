"""Placement simulator: which eviction policy keeps the right models on a GPU?

Replays synthetic request traces (Zipf popularity, bursts of a few models, mixed model sizes and
load times) against one replica's fixed memory budget, deciding every miss with
shoal.fleet.placement.plan_load, for:
- LRU (shoal.fleet.placement.LeastRecentlyUsed),
- GreedyDual-Size (shoal.fleet.placement.GreedyDualSize: reload seconds per GiB held),
- GreedyDual-Size-Frequency (shoal.fleet.placement.GreedyDualSizeFrequency, the default: uses
  since load x reload seconds per GiB held),
- Belady (offline: evict the model whose next request is furthest away; the classic optimum for
  equal sizes, a strong reference, not the exact optimum, for mixed sizes).
All policies see the same traces in one run. It prints hit ratio, bytes loaded and reload seconds
(what users wait for), the ratios against LRU, and each policy's hit ratio as a share of Belady's.
The fleet-scale simulation (pools that scale to zero) is benchmarks/fleet_sim.py, on the same
popularity and load-time code.

    .venv/bin/python benchmarks/placement_sim.py                  # the simulation (~15 s)
    .venv/bin/python benchmarks/placement_sim.py --ready-latency  # + InferenceModel -> Ready
                                                                 #   on a real apiserver/Triton

--ready-latency starts etcd + kube-apiserver (scripts/build-kube-apiserver.sh), a real Triton (in
a network namespace of its own, like a pod: needs root, see tests/support/netns.py)
and the operator, and times `InferenceModel` created -> status Ready with the Triton already
running (warm), next to the bare Triton load time of the same entry.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import platform
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shoal.fleet.placement import (
    EvictionPolicy,
    GreedyDualSize,
    GreedyDualSizeFrequency,
    LeastRecentlyUsed,
    ModelState,
    plan_load,
)

GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class SimModel:
    name: str
    memory_bytes: int
    load_s: float


@dataclass
class Outcome:
    policy: str
    requests: int = 0
    hits: int = 0
    bytes_loaded: int = 0
    load_s: float = 0.0
    evictions: int = 0
    rejected: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


def make_models(count: int, rng: random.Random) -> list[SimModel]:
    """A fleet like shoal's: mostly small encoders (MiniLM/bge-small, 100-600 MiB at serving
    batch sizes), some base/large ones (1-2.5 GiB), a few multi-GB ones (bge-m3, Qwen3-0.6B).
    Load time: python-step start-up (~1.6 s per step, partly parallel) plus weights at ~1 GiB/s,
    with per-model spread (TensorRT engines, slow volumes)."""
    models = []
    for i in range(count):
        kind = rng.random()
        if kind < 0.65:
            memory = rng.randint(100, 600) * MiB
        elif kind < 0.9:
            memory = rng.randint(1024, 2560) * MiB
        else:
            memory = rng.randint(3 * 1024, 6 * 1024) * MiB
        models.append(SimModel(f"m{i:03d}", memory, load_seconds(memory, rng)))
    return models


def load_seconds(memory_bytes: int, rng: random.Random) -> float:
    """Python-step start-up (~1.6 s) plus weights at ~1 GiB/s, with a per-model spread."""
    return round((1.6 + memory_bytes / GiB) * rng.uniform(0.7, 2.5), 2)


def zipf_sampler(
    models: Sequence[SimModel], skew: float, rng: random.Random
) -> tuple[list[SimModel], Callable[[], str]]:
    """Zipf popularity over `models` in a random rank order: (models by rank, draw a name)."""
    ranked = list(models)
    rng.shuffle(ranked)
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** skew for rank in range(len(ranked))))
    total = cumulative[-1]

    def draw() -> str:
        return ranked[bisect.bisect_left(cumulative, rng.random() * total)].name

    return ranked, draw


def zipf_trace(
    models: Sequence[SimModel], length: int, skew: float, bursts: int, rng: random.Random
) -> list[str]:
    """Requests drawn by Zipf popularity (a random rank per model), with `bursts` episodes in which
    a few otherwise unpopular models take most of the traffic for a while (a batch job, a new
    tenant), which is where recency alone misleads."""
    ranked, draw = zipf_sampler(models, skew, rng)
    trace = [draw() for _ in range(length)]
    for _ in range(bursts):
        start = rng.randrange(0, length - length // 20)
        span = rng.randint(length // 100, length // 25)
        hot = [m.name for m in rng.sample(ranked[len(ranked) // 3 :], k=3)]
        for i in range(start, min(start + span, length)):
            if rng.random() < 0.7:
                trace[i] = rng.choice(hot)
    return trace


class Belady:
    """Offline: evict the model requested furthest in the future (never again = first)."""

    name = "belady"

    def __init__(self, trace: Sequence[str]) -> None:
        self._positions: dict[str, list[int]] = defaultdict(list)
        for i, name in enumerate(trace):
            self._positions[name].append(i)
        self.now = 0

    def next_use(self, name: str) -> int:
        positions = self._positions[name]
        i = bisect.bisect_right(positions, self.now)
        return positions[i] if i < len(positions) else 1 << 60

    def order(self, candidates: Sequence[ModelState]) -> list[ModelState]:
        return sorted(candidates, key=lambda m: (-self.next_use(m.name), m.name))

    def record_use(self, model: ModelState, count: int = 1) -> None:
        pass

    def record_eviction(self, model: ModelState) -> None:
        pass


def simulate(
    models: Sequence[SimModel],
    trace: Sequence[str],
    budget_bytes: int,
    policy: EvictionPolicy,
    belady: Belady | None = None,
) -> Outcome:
    by_name = {m.name: m for m in models}
    loaded: dict[str, ModelState] = {}
    outcome = Outcome(policy.name)
    for step, name in enumerate(trace):
        outcome.requests += 1
        if belady is not None:
            belady.now = step
        model = by_name[name]
        if name in loaded:
            outcome.hits += 1
            state = ModelState(name, model.memory_bytes, loaded=True, last_used=step,
                               load_cost_s=model.load_s)  # fmt: skip
            loaded[name] = state
            policy.record_use(state)
            continue
        target = ModelState(name, model.memory_bytes, last_used=step, load_cost_s=model.load_s)
        plan = plan_load(target, loaded.values(), budget_bytes, policy)
        if not plan.admit:
            outcome.rejected += 1
            continue
        for victim in plan.evict:
            policy.record_eviction(loaded.pop(victim))
            outcome.evictions += 1
        state = ModelState(name, model.memory_bytes, loaded=True, last_used=step,
                           load_cost_s=model.load_s)  # fmt: skip
        loaded[name] = state
        policy.record_use(state)
        outcome.bytes_loaded += model.memory_bytes
        outcome.load_s += model.load_s
    return outcome


def run_simulation(args: argparse.Namespace) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print(
        f"{args.models} models, {args.requests} requests per trace, budget {args.budget_gib} GiB "
        f"per replica, seeds {args.seeds}"
    )
    scenarios = [
        ("zipf 0.8 + bursts", 0.8, 8),
        ("zipf 1.1 + bursts", 1.1, 8),
        ("zipf 0.8 flat", 0.8, 0),
    ]
    header = f"{'trace':<20} {'policy':<7} {'hit ratio':>9} {'GiB loaded':>11} {'reload s':>10} {'evictions':>9}"
    of_belady: dict[str, list[float]] = defaultdict(list)
    for label, skew, bursts in scenarios:
        print()
        totals: dict[str, Outcome] = {}
        for seed in range(args.seeds):
            rng = random.Random(seed)
            models = make_models(args.models, rng)
            if seed == 0:
                fleet = sum(m.memory_bytes for m in models) / GiB
                print(f"(fleet of seed 0: {fleet:.0f} GiB for a {args.budget_gib} GiB replica)")
            trace = zipf_trace(models, args.requests, skew, bursts, rng)
            budget = int(args.budget_gib * GiB)
            policies = (
                LeastRecentlyUsed(),
                GreedyDualSize(),
                GreedyDualSizeFrequency(),
                Belady(trace),
            )
            for policy in policies:
                belady = policy if isinstance(policy, Belady) else None
                result = simulate(models, trace, budget, policy, belady)
                total = totals.setdefault(policy.name, Outcome(policy.name))
                total.requests += result.requests
                total.hits += result.hits
                total.bytes_loaded += result.bytes_loaded
                total.load_s += result.load_s
                total.evictions += result.evictions
        print(header)
        for name, total in totals.items():
            print(
                f"{label:<20} {name:<7} {total.hit_ratio:>9.3f} {total.bytes_loaded / GiB:>11.0f} "
                f"{total.load_s:>10.0f} {total.evictions:>9d}"
            )
        lru, belady = totals["lru"], totals["belady"]
        for name in ("gds", "gdsf", "belady"):
            other = totals[name]
            print(
                f"{'':<20} {name}/lru: hit ratio x{other.hit_ratio / lru.hit_ratio:.3f}, bytes "
                f"loaded x{other.bytes_loaded / lru.bytes_loaded:.3f}, reload seconds "
                f"x{other.load_s / lru.load_s:.3f}"
            )
        for name in ("lru", "gds", "gdsf"):
            of_belady[name].append(totals[name].hit_ratio / belady.hit_ratio)
        print(
            f"{'':<20} hit ratio / Belady's: "
            + ", ".join(f"{name} {of_belady[name][-1]:.3f}" for name in ("lru", "gds", "gdsf"))
        )
    print()
    print(f"hit ratio as a share of Belady's ({' | '.join(label for label, _, _ in scenarios)}):")
    for name, shares in of_belady.items():
        print(f"  {name:<5} " + " | ".join(f"{share:.3f}" for share in shares))


def measure_ready_latency(rounds: int) -> None:
    """InferenceModel created -> Ready on a warm Triton, through a real API server and operator,
    next to Triton's own load time for the same kind of entry."""
    import os
    import tempfile
    from pathlib import Path

    import httpx

    os.environ.setdefault("SHOAL_OPERATOR_DRIFT_INTERVAL_S", "5")
    root = str(Path(__file__).resolve().parent.parent)  # the test helpers live in tests/
    if root not in sys.path:
        sys.path.insert(0, root)
    from kopf.testing import KopfRunner

    from shoal.runtime.triton import TritonServer
    from tests.operator.entries import write_entry
    from tests.operator.helpers import Kube, pool_spec
    from tests.support.kube import apply_crds, running_cluster, wait_for
    from tests.support.netns import netns_hosts

    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster() as cluster,
        netns_hosts() as hosts,
    ):
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        repository = Path(tmp)
        names = [f"warm{i}" for i in range(rounds)] + ["bare"]
        for name in names:
            write_entry(repository, name, 50 * MiB)
        # The replica runs like a pod: its own network namespace and address (needs root).
        host = hosts.create()
        server = TritonServer(
            repository, network_namespace=host.name, bind_address=host.address
        ).start()
        try:
            apply_crds(cluster)
            with cluster.http() as http:
                http.post(
                    "/api/v1/namespaces", json={"metadata": {"name": "bench"}}
                ).raise_for_status()
                kube = Kube(http, "bench")
                kube.create(
                    "inferencepools", "InferencePool", "pool", pool_spec(repository, "4Gi")
                ).raise_for_status()
                kube.write_endpoints("pool", {"pool-0": server})
                args = ["run", "-m", "shoal.operator.handlers", "--standalone", "-n", "bench"]
                with KopfRunner(args, timeout=60):
                    time.sleep(2)  # operator up, pool reconciled
                    latencies = []
                    for name in names[:-1]:
                        started = time.monotonic()
                        kube.create(
                            "inferencemodels", "InferenceModel", name, {"pool": "pool"}
                        ).raise_for_status()
                        wait_for(
                            lambda name=name: (
                                ((kube.get("inferencemodels", name) or {}).get("status") or {}).get(
                                    "phase"
                                )
                                == "Ready"
                            ),
                            120,
                            interval=0.05,
                            what=f"{name} Ready ({kube.get('inferencemodels', name)})",
                        )
                        latencies.append(time.monotonic() - started)
            # The same kind of entry loaded straight through Triton's API, after the operator
            # rounds (so neither side pays the first stub start-up alone).
            started = time.monotonic()
            httpx.post(f"{server.http_url}/v2/repository/models/bare/load", json={}, timeout=120)
            bare_s = time.monotonic() - started
        finally:
            server.stop()
    latencies.sort()
    median = latencies[len(latencies) // 2]
    print()
    print(
        f"InferenceModel created -> Ready, warm Triton, entry of 3 python steps + ensemble ({rounds} rounds):"
    )
    print(
        f"  operator path: median {median:.2f} s (min {latencies[0]:.2f}, max {latencies[-1]:.2f})"
    )
    print(f"  bare Triton load of the same kind of entry: {bare_s:.2f} s")
    print(
        f"  ratio operator/bare: x{median / bare_s:.2f}; the difference ({median - bare_s:+.2f} s) "
        "is the watch event, reading pool/Endpoints/replica, and the status patches"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=80)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--ready-latency", action="store_true", help="also time created -> Ready e2e"
    )
    parser.add_argument("--ready-rounds", type=int, default=3)
    args = parser.parse_args()
    run_simulation(args)
    if args.ready_latency:
        measure_ready_latency(args.ready_rounds)


if __name__ == "__main__":
    main()
