"""The annotations between router and operator, as pure functions: times written and read back,
garbage ignored, and a router lease counted as use only while it runs."""

from __future__ import annotations

import time

from shoal.fleet.placer import KnownModel
from shoal.operator.demand_annotations import (
    ROUTER_IN_USE_UNTIL,
    format_time,
    in_use_until,
    parse_time,
    with_router_use,
)


def known(entry: str, in_use: int = 0) -> KnownModel:
    return KnownModel(entry, "team-a", entry, 100, in_use=in_use)


def test_times_round_trip_to_the_millisecond_and_garbage_reads_as_none():
    now = time.time()
    text = format_time(now)
    assert text.endswith("Z") and len(text) == len("2026-11-29T19:00:00.123Z")
    assert abs(parse_time(text) - now) < 0.001
    assert format_time(now) != format_time(now + 0.002)  # two asks within a second differ
    for garbage in (None, "", "tomorrow", "2026-11-29T19:00:00Z", "12"):
        assert parse_time(garbage) is None
    assert in_use_until({ROUTER_IN_USE_UNTIL: text}) == parse_time(text)
    assert in_use_until({ROUTER_IN_USE_UNTIL: "soon"}) == 0.0 and in_use_until(None) == 0.0


def test_a_running_lease_counts_as_one_more_in_use_and_an_ended_one_does_not():
    models = {"a": known("a"), "b": known("b", in_use=2), "c": known("c")}
    now = time.time()
    leases = {("team-a", "a"): [now + 10], ("team-a", "b"): [now + 10], ("team-a", "c"): [now - 1]}
    counted = with_router_use(models, "team-a", leases)
    assert {e: m.in_use for e, m in counted.items()} == {"a": 1, "b": 3, "c": 0}
    # Another namespace's leases are not this one's; no index at all changes nothing.
    assert with_router_use(models, "team-b", leases) == models
    assert with_router_use(models, "team-a", None) is models
