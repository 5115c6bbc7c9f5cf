"""Placement and eviction rules (pure logic, no Triton)."""

from __future__ import annotations

import pytest

from shoal.cli import build_parser
from shoal.fleet.placement import (
    DEFAULT_POLICY,
    POLICIES,
    GreedyDualSize,
    GreedyDualSizeFrequency,
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
@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_pinned_loading_and_in_flight_models_are_never_evicted(blocker, word, policy_name):
    old = ModelState("old", 100 * MiB, **{"loaded": True, "last_used": 1, **blocker})
    newer = loaded("newer", 100, 5)
    policy = make_policy(policy_name)
    for _ in range(3):  # the blocked model is the policy's first choice otherwise (GDSF: uses)
        policy.record_use(newer)
    policy.record_use(old)
    plan = plan_load(ModelState("n", 100 * MiB), [old, newer], 200 * MiB, policy)
    assert plan.admit and plan.evict == ("newer",)

    # With only the blocked model in the way, nothing is evicted and the reason names it.
    plan = plan_load(ModelState("n", 150 * MiB), [old], 200 * MiB, policy)
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


def use(policy, model: ModelState, times: int = 1) -> None:
    for _ in range(times):
        policy.record_use(model)


def test_gdsf_keeps_a_model_used_often_over_one_loaded_for_a_single_request():
    regular = loaded("regular", 100, 1)  # older, but used five times since it was loaded
    passerby = loaded("passerby", 100, 9)  # the most recent, used once (a burst, a one-off)
    policy = GreedyDualSizeFrequency()
    use(policy, regular, 5)
    use(policy, passerby)
    plan = plan_load(ModelState("n", 100 * MiB), [regular, passerby], 200 * MiB, policy)
    assert plan.evict == ("passerby",)
    # Neither LRU nor GreedyDual-Size counts uses: both evict the regular.
    for other in (LeastRecentlyUsed(), GreedyDualSize()):
        use(other, regular, 5)
        use(other, passerby)
        assert plan_load(
            ModelState("n", 100 * MiB), [regular, passerby], 200 * MiB, other
        ).evict == ("regular",)


def test_gdsf_weighs_uses_by_reload_seconds_per_byte_held():
    policy = GreedyDualSizeFrequency()
    big = loaded("big", 1000, 5, load_cost_s=4.0)  # used 3 times: 3 * 4 s / 1000 MiB
    small = loaded("small", 100, 1, load_cost_s=2.0)  # used once: 2 s / 100 MiB, 6.7x more
    slow = loaded("slow", 100, 2, load_cost_s=30.0)
    use(policy, big, 3)
    use(policy, small)
    use(policy, slow)
    assert [m.name for m in policy.order([slow, small, big])] == ["big", "small", "slow"]


def test_gdsf_counts_uses_only_since_the_last_load_and_ages_cold_models_out():
    policy = GreedyDualSizeFrequency(max_uses=4)
    hot = loaded("hot", 100, 1)
    use(policy, hot, 1000)  # capped: counts as 4 uses
    assert policy.credit_of(hot) == pytest.approx(4 * policy.credit_of(loaded("new", 100, 2)))
    # Other models come and go while `hot` is not used; each eviction raises the floor L.
    for i in range(4):
        passerby = loaded(f"p{i}", 100, 10 + i)
        use(policy, passerby)
        assert policy.credit_of(passerby) <= policy.credit_of(hot)  # hot is kept meanwhile
        policy.record_eviction(passerby)
    fresh = loaded("fresh", 100, 20)
    use(policy, fresh)  # one use now outweighs hot's four old ones
    assert policy.credit_of(fresh) > policy.credit_of(hot)
    assert [m.name for m in policy.order([fresh, hot])] == ["hot", "fresh"]
    # Evicted, it starts again from one use when it comes back.
    policy.record_eviction(hot)
    use(policy, hot)
    assert policy.credit_of(hot) == pytest.approx(policy.credit_of(fresh))


def test_gdsf_takes_uses_reported_in_a_batch_like_one_at_a_time():
    one_by_one, batched = GreedyDualSizeFrequency(), GreedyDualSizeFrequency()
    model = loaded("a", 100, 1)
    use(one_by_one, model, 7)
    batched.record_use(model)  # the load
    batched.record_use(model, count=6)  # Triton's inference_count moved by 6 since the last poll
    assert batched.credit_of(model) == pytest.approx(one_by_one.credit_of(model))
    assert batched.credit_of(model) == pytest.approx(7 * batched.credit_of(loaded("b", 100, 1)))


def test_gdsf_plans_are_deterministic_and_independent_of_input_order():
    def replay() -> list[tuple[str, ...]]:
        policy = GreedyDualSizeFrequency()
        models = [loaded(name, 100, 3) for name in ("zeta", "alpha", "mid", "beta")]
        use(policy, models[0], 2)
        for model in models[1:]:
            use(policy, model)
        plans = []
        for permutation in (models, models[::-1], models[2:] + models[:2]):
            plan = plan_load(ModelState("new", 150 * MiB), permutation, 400 * MiB, policy)
            plans.append(plan.evict)
        return plans

    first = replay()
    # Equal credits (alpha, beta, mid) and equal recency: ties go by name; zeta has 2 uses.
    assert first == [("alpha", "beta")] * 3
    assert replay() == first


def test_policies_are_chosen_by_name_and_unknown_names_list_the_choices():
    assert isinstance(make_policy("lru"), LeastRecentlyUsed)
    assert isinstance(make_policy("gds"), GreedyDualSize)
    assert isinstance(make_policy("gdsf"), GreedyDualSizeFrequency)
    with pytest.raises(ValueError, match="lru, gds, gdsf"):
        make_policy("fifo")


def test_the_default_policy_is_one_constant_that_make_policy_and_shoal_serve_read():
    assert isinstance(make_policy(), POLICIES[DEFAULT_POLICY])
    args = build_parser().parse_args(["serve", "repo"])
    assert args.policy == DEFAULT_POLICY
    assert build_parser().parse_args(["serve", "repo", "--policy", "lru"]).policy == "lru"


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
