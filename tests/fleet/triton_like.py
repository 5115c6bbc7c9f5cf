"""An in-memory replica that follows Triton 2.51's observable rules for shoal entries, for fast
driver and placer tests (the real-Triton tests are tests/runtime/test_lru.py and
tests/fleet/test_driver_triton.py). Observed with the real server:
- loading an ensemble loads its steps with it; unloading a step makes the ensemble UNAVAILABLE;
  loading that step again brings a previously loaded ensemble back READY by itself;
- an unload is answered at once; the model goes UNLOADING and releases its memory later
  (`release_after` observations here), after its in-flight requests;
- a load can hang (a step whose initialize sleeps): `hang` holds it until released.
It also keeps the memory it holds (the encode step's, by `sizes`) and its peak, so a test can
assert that a budget was never exceeded, whatever the interleaving.
"""

from __future__ import annotations

import asyncio

from shoal.fleet.errors import LoadFailed
from shoal.fleet.hot_swap import entry_of, holds_memory
from shoal.fleet.replica import Replica
from shoal.fleet.replica_client import ReplicaObservation

STEPS = ("tokenize", "encode", "postprocess")


class TritonLikeReplica:
    def __init__(
        self,
        replica: Replica,
        *,
        ensemble_follows_steps: bool = True,
        sizes: dict[str, int] | None = None,
        release_after: int = 0,
    ) -> None:
        self.replica = replica
        self.states: dict[str, str] = {}
        self.last: dict[str, int] = {}
        self.calls: list[str] = []
        self.ensembles_loaded: set[str] = set()
        self.ensemble_follows_steps = ensemble_follows_steps
        self.fail: set[str] = set()
        self.hang: dict[str, asyncio.Event] = {}  # model -> released when set
        self.sizes = sizes or {}
        self.release_after = release_after
        self._releasing: dict[str, int] = {}  # model -> observations left before UNAVAILABLE
        self.peak_bytes = 0

    def seed(self, entry: str, last_used: int) -> None:
        for name in (*(f"{entry}__{s}" for s in STEPS), entry):
            self.states[name] = "READY"
        self.ensembles_loaded.add(entry)
        self.last[entry] = last_used
        self._account()

    def ready(self, name: str) -> bool:
        return self.states.get(name) == "READY"

    def held_bytes(self) -> int:
        entries = {entry_of(n) for n in self.states}
        return sum(self.sizes.get(e, 0) for e in entries if holds_memory(e, self.states))

    def _account(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.held_bytes())

    async def observe(self) -> ReplicaObservation:
        for name in list(self._releasing):
            self._releasing[name] -= 1
            if self._releasing[name] < 0:
                del self._releasing[name]
                self.states[name] = "UNAVAILABLE"
        return ReplicaObservation(states=dict(self.states), last_inference_ms=dict(self.last))

    async def ready_models(self) -> dict[str, str]:
        return {name: "1" for name, state in self.states.items() if state == "READY"}

    async def load(self, name: str, timeout_s: float = 0.0) -> None:
        # A client that gives up (cancels) does not stop the load in the server.
        await asyncio.shield(self._load(name))

    async def _load(self, name: str) -> None:
        self.calls.append(f"load {name}")
        if name in self.fail:
            raise LoadFailed(name, self.replica.name, "failed to load")
        entry = entry_of(name)
        loading = [f"{name}__{s}" for s in STEPS] + [name] if "__" not in name else [name]
        for model in loading:
            self.states[model] = "LOADING"
        self._account()
        if name in self.hang:
            await self.hang[name].wait()
        await asyncio.sleep(0)
        if "__" in name:
            self.states[name] = "READY"
            steps_ready = all(self.ready(f"{entry}__{s}") for s in STEPS)
            if self.ensemble_follows_steps and entry in self.ensembles_loaded and steps_ready:
                self.states[entry] = "READY"
            elif self.states.get(entry) == "LOADING":
                self.states[entry] = "UNAVAILABLE"
        else:  # an ensemble loads its steps with it
            for model in loading:
                self.states[model] = "READY"
            self.ensembles_loaded.add(name)
        self._account()

    async def unload(self, name: str) -> None:
        self.calls.append(f"unload {name}")
        if self.release_after:
            self.states[name] = "UNLOADING"
            self._releasing[name] = self.release_after
        else:
            self.states[name] = "UNAVAILABLE"
        if "__" in name:
            if self.states.get(entry_of(name)) == "READY":
                self.states[entry_of(name)] = "UNAVAILABLE"  # an ensemble without a step
        else:
            self.ensembles_loaded.discard(name)
