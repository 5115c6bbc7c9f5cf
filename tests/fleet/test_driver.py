"""The replica driver against a Triton-like in-memory replica (tests/fleet/triton_like.py): the
budget is never exceeded whatever the interleaving, a hanging load costs one model and not the
replica, failures back off with a cap, broken entries never reach Triton, and a model asked for
while it is being evicted loads again as soon as its memory is released."""

from __future__ import annotations

import asyncio
import random

import pytest

from shoal.fleet.driver import BACKOFF_CAP_S, ReplicaDriver, Resident
from shoal.fleet.errors import EntryInvalid, LoadFailed, LoadTimedOut
from shoal.fleet.replica import Replica
from tests.fleet.triton_like import TritonLikeReplica

MiB = 2**20
REPLICA = Replica("r0", "10.0.0.1", 8000)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _driver(triton: TritonLikeReplica, **kwargs) -> ReplicaDriver:
    return ReplicaDriver(REPLICA, client=triton, **kwargs)


@pytest.mark.parametrize("seed", range(8))
async def test_the_budget_is_never_exceeded_whatever_the_interleaving(seed):
    rng = random.Random(seed)
    sizes = {f"m{i}": rng.randrange(50, 400) * MiB for i in range(8)}
    budget = 800 * MiB
    triton = TritonLikeReplica(REPLICA, sizes=sizes, release_after=rng.randrange(0, 4))
    driver = _driver(triton)
    in_use = {name: rng.random() < 0.2 for name in sizes}
    residents = {n: Resident(n, s, in_use=int(in_use[n])) for n, s in sizes.items()}
    evicted_in_use: list[str] = []
    driver._on_event = lambda e: (
        e.kind == "evicted" and in_use[e.entry] and evicted_in_use.append(e.entry)
    )

    async def ask(name: str) -> None:
        await asyncio.sleep(rng.random() * 0.01)
        await driver.load(residents[name], budget, residents)

    await asyncio.gather(*(ask(rng.choice(list(sizes))) for _ in range(60)))
    assert triton.peak_bytes <= budget
    assert evicted_in_use == []  # held and in-flight requests protect their model
    assert driver.used_bytes(await driver.observe(), residents) <= budget


async def test_a_hanging_load_times_out_and_the_replica_serves_its_other_models():
    triton = TritonLikeReplica(REPLICA, sizes={"slow": 100 * MiB, "fast": 100 * MiB})
    triton.hang["slow"] = asyncio.Event()
    driver = _driver(triton, load_deadline=lambda memory: 0.2)
    residents = {n: Resident(n, 100 * MiB) for n in ("slow", "fast")}
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await driver.load(residents["slow"], 1000 * MiB, residents)
    assert isinstance(outcome.error, LoadTimedOut) and not outcome.loaded
    assert "load deadline" in str(outcome.error)
    assert loop.time() - started < 1.0
    # The lock is free: another model loads at once.
    assert (await driver.load(residents["fast"], 1000 * MiB, residents)).loaded
    # The hung one backs off instead of piling up loads on Triton.
    again = await driver.load(residents["slow"], 1000 * MiB, residents)
    assert not again.loaded and "next try in" in again.reason
    assert triton.calls.count("load slow") == 1
    triton.hang["slow"].set()


async def test_the_load_that_outlived_its_deadline_still_counts_against_the_budget():
    triton = TritonLikeReplica(REPLICA, sizes={"slow": 300 * MiB, "other": 300 * MiB})
    triton.hang["slow"] = asyncio.Event()
    driver = _driver(triton, load_deadline=lambda memory: 0.1)
    residents = {n: Resident(n, 300 * MiB) for n in ("slow", "other")}
    await asyncio.wait_for(driver.load(residents["slow"], 500 * MiB, residents), 2)
    outcome = await driver.load(residents["other"], 500 * MiB, residents)
    assert not outcome.loaded and "can be freed" in outcome.reason  # slow is still loading
    assert triton.peak_bytes <= 500 * MiB
    triton.hang["slow"].set()


async def test_failures_back_off_exponentially_up_to_a_cap_and_a_success_resets_them():
    triton = TritonLikeReplica(REPLICA)
    triton.fail.add("bad")
    clock = FakeClock()
    driver = _driver(triton, clock=clock)
    residents = {"bad": Resident("bad", 100 * MiB)}
    waits = []
    for _ in range(10):
        outcome = await driver.load(residents["bad"], 1000 * MiB, residents)
        assert isinstance(outcome.error, LoadFailed)
        waits.append(driver._backoff["bad"].not_before - clock.now)
        clock.now = driver._backoff["bad"].not_before
    assert waits[:3] == [5.0, 10.0, 20.0] and max(waits) == BACKOFF_CAP_S
    assert not any(state == "READY" for state in triton.states.values())  # no residue
    triton.fail.clear()
    clock.now += BACKOFF_CAP_S
    assert (await driver.load(residents["bad"], 1000 * MiB, residents)).loaded
    assert driver.failure("bad") is None


async def test_a_broken_entry_is_never_handed_to_triton():
    triton = TritonLikeReplica(REPLICA)
    driver = _driver(triton, entry_check=lambda name: ["m__tokenize/1/model.py is missing"])
    outcome = await driver.load(Resident("m", MiB), 10 * MiB, {})
    assert isinstance(outcome.error, EntryInvalid)
    assert "model.py is missing" in outcome.reason and "shoal repo check" in outcome.reason
    assert triton.calls == []


async def test_a_model_asked_for_while_it_is_released_loads_as_soon_as_memory_is_free():
    sizes = {"a": 300 * MiB, "b": 300 * MiB}
    triton = TritonLikeReplica(REPLICA, sizes=sizes, release_after=3)
    driver = _driver(triton)
    residents = {n: Resident(n, s) for n, s in sizes.items()}
    assert (await driver.load(residents["a"], 400 * MiB, residents)).loaded
    # Each swap waits until Triton has released the victim (3 observations here) before
    # loading: at no point do both models hold memory.
    assert (await driver.load(residents["b"], 400 * MiB, residents)).evicted == ["a"]
    outcome = await driver.load(residents["a"], 400 * MiB, residents)
    assert outcome.loaded and outcome.evicted == ["b"]
    assert triton.peak_bytes <= 400 * MiB
    assert triton.calls[-1] == "load a__encode" or triton.calls[-1] == "load a"


async def test_reload_waits_for_its_own_release_then_loads_without_a_fixed_wait():
    sizes = {"a": 300 * MiB}
    triton = TritonLikeReplica(REPLICA, sizes=sizes, release_after=5)
    driver = _driver(triton)
    residents = {"a": Resident("a", 300 * MiB)}
    await driver.load(residents["a"], 400 * MiB, residents)
    await driver.enforce_budget(0, residents)  # evicts a; its release takes 5 observations
    await triton.unload("a__encode")  # and a client asks for it while it is still UNLOADING
    outcome = await asyncio.wait_for(driver.load(residents["a"], 400 * MiB, residents), 2)
    assert outcome.loaded
    assert triton.states["a__encode"] == "READY"


async def test_models_nobody_owns_count_with_their_manifest_memory():
    triton = TritonLikeReplica(REPLICA)
    triton.seed("foreign", last_used=5)
    driver = _driver(triton, unowned_memory=lambda entry: 250 * MiB)
    observation = await driver.observe()
    assert driver.used_bytes(observation, {}) == 250 * MiB
    assert [m.name for m in driver.model_states(observation, {}) if m.evictable] == ["foreign"]


async def test_removing_a_model_whose_load_hangs_returns_at_once_and_unloads_it_afterwards():
    triton = TritonLikeReplica(REPLICA)
    triton.hang["m"] = asyncio.Event()
    driver = _driver(triton, load_deadline=lambda memory: 0.1)
    await driver.load(Resident("m", MiB), 10 * MiB, {})
    assert await asyncio.wait_for(driver.remove("m"), 1)
    triton.hang["m"].set()
    for _ in range(40):
        if triton.states.get("m") == "UNAVAILABLE":
            break
        await asyncio.sleep(0.1)
    assert triton.states["m"] == "UNAVAILABLE"
    await driver.close()
