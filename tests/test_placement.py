"""Placement and eviction rules (pure logic, no Triton)."""

from __future__ import annotations

import pytest

from shoal.fleet.placement import (
    GreedyDualSize,
    LeastRecentlyUsed,
    ModelState,
    initial_loads,
    make_policy,
    plan_load,
)

MiB = 2**20


def loaded(name: str, mib: int, last_used: float, **kw) -> ModelState:
    return ModelState(name, mib * MiB, loaded=True, last_used=last_used, **kw)


def test_a_model_that_fits_is_admitted_without_evictions():
    plan = plan_load(ModelState("c", 100 * MiB), [loaded("a", 100, 1)], 300 * MiB)
    assert plan.admit and plan.evict == ()


def test_the_least_recently_used_model_is_evicted_first():
    models = [loaded("a", 100, 5), loaded("b", 100, 2), loaded("c", 100, 9)]
    plan = plan_load(ModelState("d", 100 * MiB), models, 300 * MiB)
    assert plan.admit and plan.evict == ("b",)


def test_only_as_many_models_as_needed_are_evicted_in_lru_order():
    models = [loaded("a", 100, 5), loaded("b", 100, 2), loaded("c", 100, 9)]
    plan = plan_load(ModelState("big", 250 * MiB), models, 350 * MiB)
    assert plan.evict == ("b", "a")


def test_ties_in_recency_are_broken_by_name_so_plans_are_stable():
    models = [loaded("zeta", 100, 3), loaded("alpha", 100, 3), loaded("mid", 100, 3)]
    for permutation in (models, models[::-1], models[1:] + models[:1]):
        plan = plan_load(ModelState("new", 100 * MiB), permutation, 300 * MiB)
        assert plan.evict == ("alpha",)


def test_never_used_models_go_before_used_ones():
    models = [loaded("used", 100, 7), loaded("idle", 100, 0)]
    assert plan_load(ModelState("n", 100 * MiB), models, 200 * MiB).evict == ("idle",)


@pytest.mark.parametrize(
    "blocker, word",
    [
        ({"pinned": True}, "pinned"),
        ({"in_flight": 3}, "in-flight"),
        ({"loading": True, "loaded": False}, "loading"),
    ],
)
def test_pinned_loading_and_in_flight_models_are_never_evicted(blocker, word):
    old = ModelState("old", 100 * MiB, **{"loaded": True, "last_used": 1, **blocker})
    newer = loaded("newer", 100, 5)
    plan = plan_load(ModelState("n", 100 * MiB), [old, newer], 200 * MiB)
    assert plan.admit and plan.evict == ("newer",)

    # With only the blocked model in the way, nothing is evicted and the reason names it.
    plan = plan_load(ModelState("n", 150 * MiB), [old], 200 * MiB)
    assert not plan.admit and plan.evict == ()
    assert word in plan.reason and "'old'" not in plan.reason and "old" in plan.reason


def test_a_model_larger_than_the_budget_is_rejected_with_a_clear_reason():
    plan = plan_load(ModelState("huge", 3 * 2**30), [], 2 * 2**30)
    assert not plan.admit
    assert "huge" in plan.reason and "3.0 GiB" in plan.reason and "2.0 GiB" in plan.reason
    assert "--memory-budget" in plan.reason


def test_nothing_is_evicted_when_evicting_all_candidates_would_not_be_enough():
    models = [loaded("a", 100, 1), loaded("p", 150, 2, pinned=True)]
    plan = plan_load(ModelState("n", 200 * MiB), models, 300 * MiB)
    assert not plan.admit and plan.evict == ()
    assert "pinned: p" in plan.reason


def test_an_already_loaded_model_needs_nothing():
    models = [loaded("a", 100, 1)]
    plan = plan_load(loaded("a", 100, 1), models, 100 * MiB)
    assert plan.admit and plan.evict == ()


def test_loading_models_count_against_the_budget():
    models = [ModelState("l", 150 * MiB, loading=True), loaded("a", 100, 1)]
    plan = plan_load(ModelState("n", 100 * MiB), models, 300 * MiB)
    assert plan.evict == ("a",)


def test_greedy_dual_size_keeps_models_that_are_slow_to_reload():
    slow = loaded("slow", 100, 1, load_cost_s=10.0)  # older, but expensive to bring back
    quick = loaded("quick", 100, 5, load_cost_s=0.5)
    policy = GreedyDualSize()
    for model in (slow, quick):
        policy.record_use(model)
    assert plan_load(ModelState("n", 100 * MiB), [slow, quick], 200 * MiB, policy).evict == (
        "quick",
    )
    # LRU would have evicted the older one.
    assert plan_load(ModelState("n", 100 * MiB), [slow, quick], 200 * MiB).evict == ("slow",)


def test_greedy_dual_size_ages_credits_through_evictions():
    policy = GreedyDualSize()
    slow = loaded("slow", 100, 1, load_cost_s=2.0)
    policy.record_use(slow)
    for i in range(5):  # quick models come and go; each eviction raises the floor
        quick = loaded(f"q{i}", 100, 10 + i, load_cost_s=1.0)
        policy.record_use(quick)
        policy.record_eviction(quick)
    fresh = loaded("fresh", 100, 20, load_cost_s=1.0)
    policy.record_use(fresh)
    assert [m.name for m in policy.order([slow, fresh])] == ["slow", "fresh"]


def test_policies_are_chosen_by_name_and_unknown_names_list_the_choices():
    assert isinstance(make_policy("lru"), LeastRecentlyUsed)
    assert isinstance(make_policy("gds"), GreedyDualSize)
    with pytest.raises(ValueError, match="lru, gds"):
        make_policy("fifo")


def test_initial_loads_take_pinned_first_then_the_given_order_while_they_fit():
    models = [
        ModelState("a", 100 * MiB),
        ModelState("b", 200 * MiB),
        ModelState("c", 50 * MiB),
        ModelState("p", 100 * MiB, pinned=True),
    ]
    chosen, skipped = initial_loads(models, 260 * MiB)
    assert chosen == ["p", "a", "c"]
    assert list(skipped) == ["b"] and "200.0 MiB" in skipped["b"]


def test_blockers_name_why_each_model_stays_and_pinned_only_for_pinned_ones():
    others = [
        loaded("pinned", 100, 1, pinned=True),
        loaded("important", 100, 2, protected="higher priority"),
        loaded("busy", 100, 3, in_flight=2),
    ]
    plan = plan_load(ModelState("new", 200 * MiB), others, 300 * MiB)
    assert not plan.admit
    assert "pinned: pinned;" in plan.reason
    assert "higher priority: important" in plan.reason
    assert "serving in-flight requests: busy" in plan.reason
    assert "pinned: important" not in plan.reason
