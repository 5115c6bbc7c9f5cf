"""Placer decisions against in-memory replicas (fast; the e2e tests use real Triton).

The in-memory replica keeps Triton's observable state (index states, last_inference) and applies
load/unload the way Triton does for an ensemble (its steps come with it)."""

from __future__ import annotations

import asyncio

from shoal.fleet.driver import ReplicaDriver
from shoal.fleet.errors import LoadFailed
from shoal.fleet.placement import LeastRecentlyUsed
from shoal.fleet.placer import KnownModel, Placer, triton_models
from shoal.fleet.replica import Replica
from shoal.fleet.replica_client import ReplicaObservation

MiB = 2**20


class MemoryReplica:
    def __init__(
        self, replica: Replica, loaded: dict[str, int] | None = None, fail: str = ""
    ) -> None:
        self.replica = replica
        self.states: dict[str, str] = {}
        self.last: dict[str, int] = {}
        self.fail = fail
        self.loads: list[str] = []
        for entry, last_used in (loaded or {}).items():
            self._set(entry, "READY")
            self.last[entry] = last_used

    def _set(self, entry: str, state: str) -> None:
        for name in triton_models(entry):
            self.states[name] = state

    async def observe(self) -> ReplicaObservation:
        return ReplicaObservation(states=dict(self.states), last_inference_ms=dict(self.last))

    async def ready_models(self) -> dict[str, str]:
        return {name: "1" for name, state in self.states.items() if state == "READY"}

    async def load(self, name: str, timeout_s: float = 0.0) -> None:
        if self.fail:
            raise LoadFailed(name, self.replica.name, self.fail)
        self.loads.append(name)
        self._set(name, "READY")

    async def unload(self, name: str) -> None:
        self.states[name] = "UNAVAILABLE"


def _setup(loaded: dict[str, int], budget_models: int = 3, fail: str = ""):
    replica = Replica("r0", "10.0.0.1", 8000)
    memory = MemoryReplica(replica, loaded, fail)
    placer = Placer(
        driver_factory=lambda r: ReplicaDriver(
            r,
            client=memory,
            policy=LeastRecentlyUsed(),
            unowned_memory=lambda entry: 100 * MiB,  # as its manifest says
        )
    )
    return placer, replica, memory, budget_models * 100 * MiB


def _known(entry: str, **kwargs) -> KnownModel:
    return KnownModel(entry=entry, namespace="ns", name=entry, memory_bytes=100 * MiB, **kwargs)


async def test_evicts_least_recently_used_but_not_higher_priority_models():
    placer, replica, memory, budget = _setup(
        {"important": 1, "old": 2, "recent": 9}, budget_models=3
    )
    known = {k.entry: k for k in (_known("important", priority=5), _known("old"), _known("recent"))}
    new = _known("new")
    known["new"] = new
    result = await placer.place(new, 100 * MiB, 1, [replica], budget, known, allow_evict=True)
    assert result.loaded_on == ["r0"]
    assert [(e.entry, e.for_entry) for e in result.evictions] == [("old", "new")]
    assert memory.states["important"] == "READY"
    assert memory.loads == ["new"]  # the ensemble alone: Triton brings its steps


async def test_a_model_nobody_owns_counts_with_its_memory_and_is_evicted_by_policy():
    # "foreign" was loaded straight through Triton: no InferenceModel, never used since.
    placer, replica, memory, budget = _setup({"foreign": 0, "old": 2, "recent": 9}, budget_models=3)
    known = {k.entry: k for k in (_known("old"), _known("recent"), _known("new"))}
    result = await placer.place(
        known["new"], 100 * MiB, 1, [replica], budget, known, allow_evict=True
    )
    assert [e.entry for e in result.evictions] == ["foreign"]  # the budget holds 3, not 4
    assert memory.states["foreign__encode"] == "UNAVAILABLE"
    assert memory.states["old"] == "READY" and memory.states["recent"] == "READY"


async def test_without_eviction_allowed_the_model_waits_and_names_the_blocker():
    placer, replica, memory, budget = _setup({"a": 1, "b": 2, "c": 3})
    known = {e: _known(e) for e in ("a", "b", "c", "d")}
    result = await placer.place(
        known["d"], 100 * MiB, 1, [replica], budget, known, allow_evict=False
    )
    assert result.loaded_on == [] and result.evictions == []
    assert "fits only by evicting a" in result.blocked
    assert memory.loads == []


async def test_already_loaded_model_is_not_loaded_again():
    placer, replica, memory, budget = _setup({"a": 1})
    known = {"a": _known("a")}
    result = await placer.place(
        known["a"], 100 * MiB, 1, [replica], budget, known, allow_evict=True
    )
    assert result.loaded_on == ["r0"] and memory.loads == []


async def test_failed_load_keeps_tritons_message_and_evicts_nothing_it_did_not_need():
    placer, replica, memory, budget = _setup({}, fail="weights missing")
    known = {"a": _known("a")}
    result = await placer.place(
        known["a"], 100 * MiB, 1, [replica], budget, known, allow_evict=True
    )
    assert result.loaded_on == []
    assert result.load_errors == {"r0": "weights missing"}
    assert "load failed: weights missing" in result.blocked


async def test_a_drift_run_queued_behind_a_delete_does_not_load_the_model_back():
    placer, replica, memory, budget = _setup({"a": 1})
    known = {"a": _known("a")}
    release = asyncio.Event()
    plain_unload = memory.unload

    async def slow_unload(name: str) -> None:
        await release.wait()
        await plain_unload(name)

    memory.unload = slow_unload
    deleting = asyncio.create_task(placer.unload_everywhere("ns", "a", [replica]))
    await asyncio.sleep(0.01)  # the delete holds the model's lock
    # kopf sets the drift timer's stop flag before the delete handler runs.
    drift = asyncio.create_task(
        placer.place(
            known["a"], 100 * MiB, 1, [replica], budget, known, False, stopped=lambda: True
        )
    )
    await asyncio.sleep(0.01)
    release.set()
    assert await deleting == {}
    result = await drift
    assert result.loaded_on == [] and memory.loads == []
    assert memory.states["a"] != "READY"


class SlowUnloadReplica(MemoryReplica):
    """Triton answers an unload at once and frees the memory later (in-flight requests first)."""

    def __init__(self, *args, observes_until_released: int = 3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.releasing: dict[str, int] = {}
        self.observes_until_released = observes_until_released
        self.states_at_load: dict[str, str] = {}

    async def observe(self) -> ReplicaObservation:
        for name in list(self.releasing):
            self.releasing[name] -= 1
            if self.releasing[name] <= 0:
                del self.releasing[name]
                self.states[name] = "UNAVAILABLE"
        return await super().observe()

    async def unload(self, name: str) -> None:
        self.states[name] = "UNLOADING"
        self.releasing[name] = self.observes_until_released

    async def load(self, name: str, timeout_s: float = 0.0) -> None:
        self.states_at_load = dict(self.states)
        await super().load(name)


async def test_eviction_waits_until_the_victim_released_its_memory_before_loading():
    replica = Replica("r0", "10.0.0.1", 8000)
    memory = SlowUnloadReplica(replica, {"old": 1, "recent": 2})
    placer = Placer(driver_factory=lambda r: ReplicaDriver(r, client=memory))
    known = {e: _known(e) for e in ("old", "recent", "new")}
    result = await placer.place(
        known["new"], 100 * MiB, 1, [replica], 200 * MiB, known, allow_evict=True
    )
    assert result.loaded_on == ["r0"]
    assert [e.entry for e in result.evictions] == ["old"]
    assert memory.states_at_load["old__encode"] == "UNAVAILABLE"


async def test_a_blocker_of_higher_priority_is_named_as_such_not_as_pinned():
    placer, replica, memory, budget = _setup({"vip": 1, "pin": 2}, budget_models=2)
    known = {
        "vip": _known("vip", priority=5),
        "pin": _known("pin", pinned=True),
        "new": _known("new"),
    }
    result = await placer.place(known["new"], 100 * MiB, 1, [replica], budget, known, True)
    assert result.loaded_on == []
    assert "higher priority: vip" in result.blocked and "pinned: pin" in result.blocked
    assert "pinned: pin, vip" not in result.blocked
