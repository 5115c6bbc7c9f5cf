"""Hot swap in the operator: an eviction unloads only the encode step, a reload loads only it,
a deletion unloads all four Triton models, and memory is counted by the encode step.

The decision is shoal.fleet.hot_swap's (shared with `shoal serve`, whose real-Triton test is
tests/runtime/test_lru.py). Here the Placer runs against an in-memory replica that follows
Triton's rules for an ensemble, as observed with Triton 2.51 (tests/runtime/test_lru.py):
loading the ensemble loads its steps; unloading a step makes the ensemble UNAVAILABLE; loading
that step again brings a previously loaded ensemble back READY by itself.
"""

from __future__ import annotations

import pytest

from shoal.fleet.driver import ReplicaDriver
from shoal.fleet.hot_swap import (
    entry_of,
    holds_memory,
    light_steps_ready,
    models_to_evict,
    models_to_load,
    models_to_remove,
    present,
)
from shoal.fleet.placement import LeastRecentlyUsed
from shoal.fleet.placer import KnownModel, Placer
from shoal.fleet.replica import Replica
from tests.fleet.triton_like import STEPS, TritonLikeReplica

MiB = 2**20


# -- the shared decision ------------------------------------------------------------------------
def test_eviction_unloads_the_encode_step_and_removal_everything_ensemble_first():
    assert models_to_evict("m") == ["m__encode"]
    assert models_to_evict("m", keep_light_steps=False) == models_to_remove("m")
    assert models_to_remove("m") == ["m", "m__tokenize", "m__encode", "m__postprocess"]


def test_reload_is_the_encode_step_only_when_the_light_steps_stayed():
    evicted = {"m": "UNAVAILABLE", "m__tokenize": "READY", "m__encode": "UNAVAILABLE",
               "m__postprocess": "READY"}  # fmt: skip
    assert light_steps_ready("m", evicted)
    assert models_to_load("m", light_steps_ready("m", evicted)) == ["m__encode", "m"]
    assert models_to_load("m", True, keep_light_steps=False) == ["m"]
    cold = {**evicted, "m__tokenize": "UNAVAILABLE"}
    assert models_to_load("m", light_steps_ready("m", cold)) == ["m"]


@pytest.mark.parametrize(
    ("states", "holds"),
    [
        ({"m": "READY", "m__encode": "READY", "m__tokenize": "READY"}, True),
        ({"m": "UNAVAILABLE", "m__encode": "UNAVAILABLE", "m__tokenize": "READY"}, False),
        ({"m": "LOADING", "m__encode": "", "m__tokenize": "LOADING"}, True),
        ({"m": "UNAVAILABLE", "m__encode": "UNLOADING"}, True),
        ({"m": "", "m__encode": ""}, False),
        ({"m": "READY"}, True),  # not a shoal entry (no encode step): counted while loaded
    ],
)
def test_memory_is_held_by_the_encode_step(states, holds):
    assert holds_memory("m", states) is holds


def test_presence_and_entry_names():
    assert present("m", {"m__tokenize": "READY", "m__encode": "UNAVAILABLE"})
    assert not present("m", {"m": "UNAVAILABLE", "m__encode": ""})
    assert {entry_of(f"m__{s}") for s in STEPS} == {"m"} and entry_of("m") == "m"
    assert entry_of("__encode") == "__encode"


# -- the Placer against a replica that behaves like Triton -------------------------------------
def _setup(**kwargs):
    replica = Replica("r0", "10.0.0.1", 8000)
    triton = TritonLikeReplica(replica, **kwargs)
    placer = Placer(
        driver_factory=lambda r: ReplicaDriver(r, client=triton, policy=LeastRecentlyUsed())
    )
    known = {e: KnownModel(e, "ns", e, 100 * MiB) for e in ("a", "b", "c", "d")}
    return placer, replica, triton, known


async def _place(placer, replica, known, entry, budget_models=2, allow_evict=True):
    return await placer.place(
        known[entry], 100 * MiB, 1, [replica], budget_models * 100 * MiB, known, allow_evict
    )


async def test_eviction_unloads_only_the_encode_step_and_the_reload_loads_only_it():
    placer, replica, triton, known = _setup()
    triton.seed("a", last_used=1)
    triton.seed("b", last_used=2)

    result = await _place(placer, replica, known, "c")
    assert [(e.entry, e.for_entry) for e in result.evictions] == [("a", "c")]
    assert triton.calls == ["unload a__encode", "load c"]
    assert triton.ready("a__tokenize") and triton.ready("a__postprocess")
    assert not triton.ready("a") and not triton.ready("a__encode")

    # a comes back: b is the least recently used now; a's encode step alone is loaded.
    triton.last["c"] = 3
    triton.calls.clear()
    result = await _place(placer, replica, known, "a")
    assert result.loaded_on == ["r0"]
    assert [e.entry for e in result.evictions] == ["b"]
    assert triton.calls == ["unload b__encode", "load a__encode"]
    assert triton.ready("a")  # the ensemble came back by itself


async def test_the_ensemble_is_loaded_after_the_encode_step_when_it_does_not_come_back():
    placer, replica, triton, known = _setup(ensemble_follows_steps=False)
    triton.seed("a", last_used=1)
    await triton.unload("a__encode")
    triton.calls.clear()
    result = await _place(placer, replica, known, "a")
    assert result.loaded_on == ["r0"]
    assert triton.calls == ["load a__encode", "load a"]


async def test_an_evicted_entrys_light_steps_hold_no_budget():
    placer, replica, triton, known = _setup()
    triton.seed("a", last_used=1)
    triton.seed("b", last_used=2)
    await _place(placer, replica, known, "c")  # evicts a's encode step
    assert await placer.models_per_replica([replica]) == {"r0": 2}
    # Room for one more in a 3-model budget without evicting: a's leftovers count nothing.
    triton.calls.clear()
    result = await _place(placer, replica, known, "d", budget_models=3, allow_evict=False)
    assert result.loaded_on == ["r0"] and result.evictions == []
    assert triton.calls == ["load d"]


async def test_delete_unloads_all_four_models_of_a_loaded_or_an_evicted_entry():
    placer, replica, triton, known = _setup()
    triton.seed("a", last_used=1)
    triton.seed("b", last_used=2)
    await _place(placer, replica, known, "c")  # a evicted: only its light steps remain
    triton.calls.clear()
    assert await placer.unload_everywhere("ns", "a", [replica]) == {}
    assert triton.calls == ["unload a__tokenize", "unload a__postprocess"]
    triton.calls.clear()
    assert await placer.unload_everywhere("ns", "b", [replica]) == {}
    assert triton.calls == ["unload b", "unload b__tokenize", "unload b__encode",
                            "unload b__postprocess"]  # fmt: skip
    assert not any(triton.ready(n) for n in triton.states if entry_of(n) in ("a", "b"))


async def test_a_failed_encode_reload_leaves_nothing_of_the_entry():
    placer, replica, triton, known = _setup()
    triton.seed("a", last_used=1)
    await triton.unload("a__encode")
    triton.fail.add("a__encode")
    triton.calls.clear()
    result = await _place(placer, replica, known, "a")
    assert result.load_errors == {"r0": "failed to load"}
    assert triton.calls == ["load a__encode", "unload a__tokenize", "unload a__postprocess"]
    assert not present("a", triton.states)
