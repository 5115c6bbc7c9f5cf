"""Fleet-scale placement simulator: what scale-to-zero pools cost in GPU-hours and cold requests.

500 models of 100 MiB-2 GiB (log-uniform; reload seconds from size, the formula of
benchmarks/placement_sim.py) over three pools, one per GPU class, each model on the pool its size
calls for. Requests follow Zipf popularity (the same sampler as placement_sim.py) at a rate with a
day/night cycle (peak at 14:00, trough at 02:00). Each replica places models with
shoal.fleet.placement.plan_load and an eviction policy; a request for a model that is not loaded
loads it on the replica with the most free memory (loads on one replica run one at a time, as the
replica driver serializes them).

Pools scale like a KEDA ScaledObject with two triggers, HPA taking the larger:
- request rate: ceil(requests/s over the last minute / --target-rps);
- working set: ceil(bytes of the distinct models asked for in the last --working-set-s (10
  minutes) / memory per replica), so that the models in use fit the pool (a metric the router
  would export);
clamped to [min, max], polled every 30 s; up at once, down only to the largest value desired over
the last 5 minutes (HPA's scale-down stabilization); to zero after --cooldown-s without a request
(KEDA's cooldownPeriod). A request to a pool at zero wakes it at once (the router holds the request
and pushes activation) and waits for --replica-start-s plus its model's load.

Compared, on the same requests, over the last of --days simulated days (the first ones warm up):
- one replica per model, always on (every model loaded, never cold);
- always-on packing: each pool at the replicas that hold all its models (first-fit decreasing)
  or that its peak rate needs, whichever is more; never scales down (never cold);
- shoal: scale with demand and to zero, with the default policy and with LRU (placement changes
  what requests meet, not the replica counts: those follow requests alone);
- shoal with one replica at least per pool (no scale to zero), the default policy.
It prints GPU-hours per GPU class and in all, the share of requests that met a cold model (its
model not loaded yet: a load wait; or its pool at zero or still starting: a replica start and a
load), the mean wait of those, and the ratios.

    .venv/bin/python benchmarks/fleet_sim.py            # ~35 s on 2 cores
    .venv/bin/python benchmarks/fleet_sim.py --help     # rates, sizes, delays
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from placement_sim import GiB, MiB, SimModel, load_seconds, zipf_sampler

from shoal.fleet.placement import DEFAULT_POLICY, EvictionPolicy, ModelState, make_policy, plan_load

DAY_S = 86_400.0
POLL_S = 30.0  # KEDA pollingInterval
RATE_WINDOW_S = 60.0
STABILIZATION_S = 300.0  # HPA scale-down stabilization window


@dataclass(frozen=True)
class GpuClass:
    name: str
    memory_bytes: int  # placement budget per replica (GPU memory less the runtime's share)
    largest_model_bytes: int  # models up to this size are served here (smaller classes first)


GPU_CLASSES = (
    GpuClass("t4-16gb", 14 * GiB, 300 * MiB),
    GpuClass("l4-24gb", 20 * GiB, 800 * MiB),
    GpuClass("a100-40gb", 36 * GiB, 2 * GiB),
)


@dataclass
class Replica:
    name: str
    policy: EvictionPolicy
    ready_at: float  # replica start finished (pod scheduled, Triton up)
    budget_bytes: int
    loads_free_at: float = 0.0  # loads on one replica run one after another
    loaded: dict[str, float] = field(default_factory=dict)  # model -> time its load finished
    last_used: dict[str, float] = field(default_factory=dict)
    used_bytes: int = 0


@dataclass
class Pool:
    gpu: GpuClass
    models: dict[str, SimModel]
    policy: str
    min_replicas: int
    max_replicas: int
    replica_start_s: float
    working_set_s: float  # how far back the working-set trigger looks
    replicas: list[Replica] = field(default_factory=list)
    where: dict[str, Replica] = field(default_factory=dict)  # model -> the replica holding it
    last_minute: deque[float] = field(default_factory=deque)  # request times (rate trigger)
    working_set: deque[tuple[float, str]] = field(default_factory=deque)  # within working_set_s
    uses_in_working_set: dict[str, int] = field(default_factory=dict)
    working_set_bytes: int = 0
    desired: deque[tuple[float, int]] = field(default_factory=deque)  # last 5 minutes
    last_request: float = -math.inf
    started: int = 0  # replicas ever started (names)
    gpu_seconds: float = 0.0
    accounted_until: float = 0.0

    def note_request(self, name: str, now: float) -> None:
        self.last_request = now
        self.last_minute.append(now)
        self.working_set.append((now, name))
        if not self.uses_in_working_set.get(name):
            self.working_set_bytes += self.models[name].memory_bytes
        self.uses_in_working_set[name] = self.uses_in_working_set.get(name, 0) + 1

    def forget_before(self, now: float) -> None:
        while self.last_minute and self.last_minute[0] < now - RATE_WINDOW_S:
            self.last_minute.popleft()
        while self.working_set and self.working_set[0][0] < now - self.working_set_s:
            _, name = self.working_set.popleft()
            self.uses_in_working_set[name] -= 1
            if not self.uses_in_working_set[name]:
                self.working_set_bytes -= self.models[name].memory_bytes


@dataclass
class Tally:
    requests: int = 0
    cold_load: int = 0  # the model was not loaded (or still loading) on a running replica
    cold_zero: int = 0  # the pool was at zero or its replicas were still starting
    wait_s: float = 0.0  # summed waits of cold requests
    refused: int = 0  # no replica could make room (all busy loading): the router would hold it

    @property
    def cold(self) -> int:
        return self.cold_load + self.cold_zero


@dataclass(frozen=True)
class Workload:
    models: list[SimModel]
    pool_of: dict[str, str]  # model -> GPU class name
    times: list[float]
    names: list[str]


def make_fleet(count: int, rng: random.Random) -> tuple[list[SimModel], dict[str, str]]:
    """`count` models, 100 MiB-2 GiB log-uniform, each on the smallest GPU class it suits."""
    models, pool_of = [], {}
    for i in range(count):
        memory = int(math.exp(rng.uniform(math.log(100 * MiB), math.log(2 * GiB))))
        model = SimModel(f"m{i:03d}", memory, load_seconds(memory, rng))
        models.append(model)
        pool_of[model.name] = next(g.name for g in GPU_CLASSES if memory <= g.largest_model_bytes)
    return models, pool_of


def day_night_rate(mean_rps: float, swing: float) -> Callable[[float], float]:
    """Requests/s at time t: mean x (1 + swing x cos), highest at 14:00, lowest at 02:00."""
    return lambda t: mean_rps * (1 + swing * math.cos(2 * math.pi * (t / DAY_S - 14 / 24)))


def make_workload(args: argparse.Namespace, mean_rps: float, seed: int) -> Workload:
    """The fleet of `seed` (the same models for every rate) and its requests."""
    rng = random.Random(seed)
    models, pool_of = make_fleet(args.models, rng)
    _, draw = zipf_sampler(models, args.skew, rng)
    rate = day_night_rate(mean_rps, args.swing)
    peak = mean_rps * (1 + args.swing)
    times: list[float] = []
    names: list[str] = []
    t = 0.0
    while peak > 0:  # a Poisson process by thinning: exact for any rate(t) below `peak`
        t += rng.expovariate(peak)
        if t >= args.days * DAY_S:
            return Workload(models, pool_of, times, names)
        if rng.random() * peak < rate(t):
            times.append(t)
            names.append(draw())
    return Workload(models, pool_of, times, names)


# -- the shoal fleet: replicas that place models, pools that scale ------------------------------
def model_states(replica: Replica, models: dict[str, SimModel], now: float) -> list[ModelState]:
    return [
        ModelState(
            name,
            models[name].memory_bytes,
            loaded=ready <= now,
            loading=ready > now,
            last_used=replica.last_used.get(name, 0.0),
            load_cost_s=models[name].load_s,
        )
        for name, ready in replica.loaded.items()
    ]


def serve_request(pool: Pool, name: str, now: float, tally: Tally | None) -> None:
    """Route one request: a hit, or a wait for a load (and a replica start)."""
    model = pool.models[name]
    pool.note_request(name, now)
    if not pool.replicas:
        scale_to(pool, 1, now)  # the router holds the request and wakes the pool
    none_ready = all(r.ready_at > now for r in pool.replicas)
    replica = pool.where.get(name) or load_somewhere(pool, model, now)
    if replica is None:
        if tally:
            tally.requests += 1
            tally.refused += 1
            tally.cold_load += 1
        return
    ready = replica.loaded[name]
    replica.last_used[name] = now
    replica.policy.record_use(
        ModelState(name, model.memory_bytes, loaded=True, last_used=now, load_cost_s=model.load_s)
    )
    if tally is None:
        return
    tally.requests += 1
    if ready > now:
        tally.wait_s += ready - now
        if none_ready:
            tally.cold_zero += 1
        else:
            tally.cold_load += 1


def load_somewhere(pool: Pool, model: SimModel, now: float) -> Replica | None:
    """Load `model` on a replica that can make room: running ones first (a load, even after an
    eviction, is quicker than a replica start), the most free memory first."""
    for replica in sorted(pool.replicas, key=lambda r: (r.ready_at > now, r.used_bytes, r.name)):
        target = ModelState(model.name, model.memory_bytes, last_used=now, load_cost_s=model.load_s)
        states = model_states(replica, pool.models, now)
        plan = plan_load(target, states, replica.budget_bytes, replica.policy)
        if not plan.admit:
            continue
        for victim in plan.evict:
            evict(pool, replica, victim, now)
        start = max(now, replica.ready_at, replica.loads_free_at)
        replica.loads_free_at = start + model.load_s
        replica.loaded[model.name] = replica.loads_free_at
        replica.used_bytes += model.memory_bytes
        pool.where[model.name] = replica
        return replica
    return None


def evict(pool: Pool, replica: Replica, name: str, now: float) -> None:
    model = pool.models[name]
    replica.policy.record_eviction(
        ModelState(name, model.memory_bytes, loaded=True,
                   last_used=replica.last_used.get(name, 0.0), load_cost_s=model.load_s)
    )  # fmt: skip
    del replica.loaded[name]
    replica.last_used.pop(name, None)
    replica.used_bytes -= model.memory_bytes
    del pool.where[name]


def account(pool: Pool, now: float, measure_from: float) -> None:
    """GPU-seconds of the replicas running (or starting) since the last change."""
    start = max(pool.accounted_until, measure_from)
    if now > start:
        pool.gpu_seconds += len(pool.replicas) * (now - start)
    pool.accounted_until = max(pool.accounted_until, now)


def scale_to(pool: Pool, count: int, now: float) -> None:
    while len(pool.replicas) < count:
        pool.started += 1
        pool.replicas.append(
            Replica(
                f"{pool.gpu.name}-{pool.started}",
                make_policy(pool.policy),
                ready_at=now + pool.replica_start_s,
                budget_bytes=pool.gpu.memory_bytes,
            )
        )
    while len(pool.replicas) > count:  # the newest goes first, as a ReplicaSet scales down
        gone = pool.replicas.pop()
        for name in list(gone.loaded):
            del pool.where[name]


def desired_replicas(pool: Pool, now: float, target_rps: float, cooldown_s: float) -> int:
    """KEDA's answer at a poll: the larger of the two triggers, clamped, zero after cooldown."""
    pool.forget_before(now)
    if pool.min_replicas == 0 and now - pool.last_request >= cooldown_s:
        return 0
    by_rate = math.ceil(len(pool.last_minute) / RATE_WINDOW_S / target_rps)
    by_memory = math.ceil(pool.working_set_bytes / pool.gpu.memory_bytes)
    wanted = max(by_rate, by_memory, 1)
    return max(pool.min_replicas, min(pool.max_replicas, wanted))


def autoscale(pool: Pool, now: float, target_rps: float, cooldown_s: float) -> None:
    desired = desired_replicas(pool, now, target_rps, cooldown_s)
    pool.desired.append((now, desired))
    while pool.desired[0][0] < now - STABILIZATION_S:
        pool.desired.popleft()
    if desired == 0:  # KEDA deactivates after its cooldown, outside HPA's window
        scale_to(pool, 0, now)
    elif desired > len(pool.replicas):
        scale_to(pool, desired, now)
    else:
        scale_to(pool, max(d for _, d in pool.desired), now)


def simulate_shoal(
    workload: Workload, args: argparse.Namespace, policy: str, min_replicas: int
) -> tuple[Tally, dict[str, float]]:
    """The shoal fleet on `workload`: (what requests met, GPU-hours per class) over the last day."""
    pools = {
        gpu.name: Pool(
            gpu,
            {m.name: m for m in workload.models if workload.pool_of[m.name] == gpu.name},
            policy,
            min_replicas,
            args.max_replicas,
            args.replica_start_s,
            args.working_set_s,
        )
        for gpu in GPU_CLASSES
    }
    for pool in pools.values():
        scale_to(pool, min_replicas, 0.0)
    measure_from = (args.days - 1) * DAY_S
    tally = Tally()
    next_poll = 0.0
    for now, name in zip(workload.times, workload.names, strict=True):
        while next_poll <= now:
            for pool in pools.values():
                account(pool, next_poll, measure_from)
                autoscale(pool, next_poll, args.target_rps, args.cooldown_s)
            next_poll += POLL_S
        pool = pools[workload.pool_of[name]]
        account(pool, now, measure_from)
        serve_request(pool, name, now, tally if now >= measure_from else None)
    for pool in pools.values():
        account(pool, args.days * DAY_S, measure_from)
    return tally, {name: pool.gpu_seconds / 3600 for name, pool in pools.items()}


# -- the always-on baselines ----------------------------------------------------------------------
def packed_replicas(sizes: Sequence[int], budget: int) -> int:
    """Replicas that hold every model at once: first-fit decreasing."""
    free: list[int] = []
    for size in sorted(sizes, reverse=True):
        slot = next((i for i, room in enumerate(free) if room >= size), None)
        if slot is None:
            free.append(budget - size)
        else:
            free[slot] -= size
    return len(free)


def peak_rate(times: Sequence[float], start: float) -> float:
    """Most requests in any minute from `start` on, per second."""
    first = bisect.bisect_left(times, start)
    counts: dict[int, int] = {}
    for t in times[first:]:
        counts[int(t // RATE_WINDOW_S)] = counts.get(int(t // RATE_WINDOW_S), 0) + 1
    return max(counts.values(), default=0) / RATE_WINDOW_S


def always_on(workload: Workload, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """GPU-hours per class of one replica per model, and of always-on packing, over one day."""
    one_each, packing = {}, {}
    start = (args.days - 1) * DAY_S
    for gpu in GPU_CLASSES:
        mine = [m for m in workload.models if workload.pool_of[m.name] == gpu.name]
        times = [t for t, n in zip(workload.times, workload.names, strict=True)
                 if workload.pool_of[n] == gpu.name]  # fmt: skip
        by_rate = math.ceil(peak_rate(times, start) / args.target_rps)
        one_each[gpu.name] = len(mine) * 24.0
        packing[gpu.name] = max(packed_replicas([m.memory_bytes for m in mine], gpu.memory_bytes),
                                by_rate) * 24.0  # fmt: skip
    return {"one replica per model": one_each, "always-on packing": packing}


# -- report ---------------------------------------------------------------------------------------
def describe_pools(workload: Workload) -> str:
    parts = []
    for gpu in GPU_CLASSES:
        mine = [m for m in workload.models if workload.pool_of[m.name] == gpu.name]
        total = sum(m.memory_bytes for m in mine) / GiB
        parts.append(
            f"{gpu.name} ({len(mine)} models, {total:.0f} GiB; {gpu.memory_bytes / GiB:.0f} GiB "
            "per replica)"
        )
    return "pools: " + ", ".join(parts)


def report(rows: dict[str, tuple[Tally | None, dict[str, float]]]) -> None:
    """One line per fleet: GPU-hours per class and in all, ratios, what requests met."""
    classes = [gpu.name for gpu in GPU_CLASSES]
    one_each = sum(rows["one replica per model"][1].values())
    packing = sum(rows["always-on packing"][1].values())
    print(
        f"{'fleet':<30} "
        + " ".join(f"{c:>9}" for c in classes)
        + f" {'GPU-h':>8} {'/1 each':>8} {'/packing':>8} {'cold':>6} {'no replica up':>13}"
        + f" {'cold wait':>9}"
    )
    for label, (tally, hours) in rows.items():
        total = sum(hours.values())
        cold = tally.cold / tally.requests if tally else 0.0
        zero = tally.cold_zero / tally.requests if tally else 0.0
        wait = f"{tally.wait_s / tally.cold:>8.1f}s" if tally and tally.cold else f"{'-':>9}"
        print(
            f"{label:<30} "
            + " ".join(f"{hours[c]:>9.1f}" for c in classes)
            + f" {total:>8.1f} {total / one_each:>8.3f} {total / packing:>8.3f} {cold:>6.2%}"
            + f" {zero:>13.3%} {wait}"
        )
    held = {label: t.refused for label, (t, _) in rows.items() if t and t.refused}
    if held:
        print(f"held with every replica busy loading (counted cold): {held}")


def compare(args: argparse.Namespace, mean_rps: float) -> None:
    workload = make_workload(args, mean_rps, args.seed)
    measured = sum(1 for t in workload.times if t >= (args.days - 1) * DAY_S)
    print(
        f"\nmean {mean_rps} requests/s (peak x{1 + args.swing:.1f}, trough "
        f"x{1 - args.swing:.1f}): {measured} requests on the measured day"
    )
    rows: dict[str, tuple[Tally | None, dict[str, float]]] = {
        label: (None, hours) for label, hours in always_on(workload, args).items()
    }
    for policy in dict.fromkeys([DEFAULT_POLICY, "lru"]):
        rows[f"shoal, scale to zero, {policy}"] = simulate_shoal(workload, args, policy, 0)
    rows[f"shoal, min 1 replica, {DEFAULT_POLICY}"] = simulate_shoal(
        workload, args, DEFAULT_POLICY, 1
    )
    report(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--skew", type=float, default=0.8, help="Zipf exponent of popularity")
    parser.add_argument(
        "--mean-rps",
        type=float,
        nargs="+",
        default=[0.05, 0.5, 4.0],
        help="requests/s over the day, for the whole fleet (one comparison each)",
    )
    parser.add_argument(
        "--swing", type=float, default=0.9, help="peak = mean x (1 + swing), trough x (1 - swing)"
    )
    parser.add_argument("--days", type=int, default=2, help="the last one is measured")
    parser.add_argument(
        "--target-rps", type=float, default=50.0, help="KEDA target: requests/s per replica"
    )
    parser.add_argument("--max-replicas", type=int, default=40)
    parser.add_argument(
        "--cooldown-s", type=float, default=300.0, help="KEDA cooldownPeriod before zero"
    )
    parser.add_argument(
        "--working-set-s", type=float, default=600.0, help="working-set trigger's look-back"
    )
    parser.add_argument(
        "--replica-start-s", type=float, default=60.0, help="pod scheduled, Triton up"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    print(
        f"{args.models} models, Zipf {args.skew}, replica start {args.replica_start_s:.0f} s, "
        f"cooldown {args.cooldown_s:.0f} s, working set over {args.working_set_s:.0f} s, target {args.target_rps:.0f} requests/s per replica, "
        f"{args.days} days simulated (the last measured), seed {args.seed}"
    )
    print(describe_pools(make_workload(args, 0.0, args.seed)))
    for mean_rps in args.mean_rps:
        compare(args, mean_rps)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
