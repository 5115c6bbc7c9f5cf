"""The InferenceModel status decision (model_status.py): pure, so every branch is checked here
without a cluster; the e2e tests check that the handlers write what it decides."""

from __future__ import annotations

from datetime import UTC, datetime

from shoal.fleet.placer import PlacementResult
from shoal.operator.model_status import Placed, invalid, placed, shows_loading
from shoal.operator.specs import model_spec

MiB = 2**20


def _model(**spec):
    return model_spec("minilm", "ns", {"pool": "gpu-a", **spec})


def _placed(result, ready_replicas=2, allow_evict=True, **kw):
    return Placed(_model(**kw.pop("spec", {})), "gpu-a", 100 * MiB, ready_replicas, result,
                  allow_evict, **kw)  # fmt: skip


def _condition(status, type_):
    return next((c for c in status["conditions"] if c["type"] == type_), None)


def test_a_model_loaded_on_its_replicas_is_ready_with_where_and_one_normal_event():
    result = PlacementResult(loaded_on=["gpu-a-0"], last_used=datetime(2026, 1, 2, tzinfo=UTC))
    decision = placed({}, 1, _placed(result))
    status = decision.status
    assert status["phase"] == "Ready"
    assert (status["pool"], status["entry"], status["replicas"]) == ("gpu-a", "minilm", ["gpu-a-0"])
    assert status["loadedReplicas"] == 1 and status["lastUsed"] == "2026-01-02T00:00:00Z"
    assert _condition(status, "Ready")["status"] == "True"
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "Loaded")]
    assert not decision.retry
    # The next drift run finds the same: nothing to announce.
    assert placed(status, 1, _placed(result)).events == ()


def test_a_load_failure_is_announced_once_and_retried_each_time():
    result = PlacementResult(load_errors={"gpu-a-0": "weights missing"})
    first = placed({}, 1, _placed(result, ready_replicas=1))
    assert first.status["phase"] == "Failed"
    assert "weights missing" in first.status["lastError"]
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "LoadFailed")]
    assert "weights missing" in first.retry and first.metric_reason == "LoadFailed"
    again = placed(first.status, 1, _placed(result, ready_replicas=1, allow_evict=False))
    assert again.events == ()  # the drift run finds the same broken model: no new warning
    # Fixed: Ready, lastError removed, one Normal event.
    fixed = placed(again.status, 1, _placed(PlacementResult(loaded_on=["gpu-a-0"]), 1))
    assert fixed.status["phase"] == "Ready" and fixed.status["lastError"] is None
    assert [e.reason for e in fixed.events] == ["Loaded"]


def test_a_model_that_cannot_be_placed_stays_pending_without_flapping_or_repeated_events():
    blocked = PlacementResult(blocked="1 more replica(s) wanted; gpu-a-0: pinned: other")
    first = placed({}, 1, _placed(blocked, ready_replicas=1))
    assert first.status["phase"] == "Pending"
    assert _condition(first.status, "Loaded")["reason"] == "NoCapacity"
    assert [e.reason for e in first.events] == ["NoCapacity"]
    assert first.retry  # a spec change may evict: it retries
    # Retries of the same generation show Pending, never Loading again, and post nothing.
    assert not shows_loading(first.status, 1, wanted=1)
    second = placed(first.status, 1, _placed(blocked, ready_replicas=1))
    assert second.status["phase"] == "Pending" and second.events == ()
    # A new generation (a person changed the spec) shows Loading once and announces again.
    assert shows_loading(second.status, 2, wanted=1)
    assert [e.reason for e in placed(second.status, 2, _placed(blocked, 1)).events] == [
        "NoCapacity"
    ]


def test_loading_is_shown_for_a_new_model_but_not_when_nothing_is_wanted():
    assert shows_loading({}, 1, wanted=1)
    assert not shows_loading({}, 1, wanted=0)
    assert not shows_loading({"phase": "Ready", "observedGeneration": 1}, 2, wanted=1)


def test_a_model_that_lost_its_place_is_evicted_and_the_drift_does_not_retry():
    previous = {"phase": "Ready", "loadedReplicas": 1, "conditions": []}
    decision = placed(previous, 1, _placed(PlacementResult(blocked="needs room"), 1, False))
    assert decision.status["phase"] == "Evicted"
    assert _condition(decision.status, "Loaded")["reason"] == "Evicted"
    assert not decision.retry


def test_no_replicas_and_unreachable_replicas_are_told_apart():
    none = placed({}, 1, _placed(PlacementResult(blocked="no ready replicas"), ready_replicas=0))
    assert _condition(none.status, "Loaded")["reason"] == "NoReplicas"
    gone = PlacementResult(unreachable={"gpu-a-0": "connection refused"}, blocked="x")
    down = placed({}, 1, _placed(gone, ready_replicas=1))
    assert _condition(down.status, "Loaded")["reason"] == "ReplicaUnreachable"
    assert down.status["phase"] == "Pending" and "connection refused" in down.retry


def test_a_duplicate_entry_gets_a_condition_naming_the_other_model_once():
    result = PlacementResult(loaded_on=["gpu-a-0"])
    decision = placed({}, 1, _placed(result, duplicates=("minilm-copy",)))
    duplicate = _condition(decision.status, "DuplicateEntry")
    assert duplicate["status"] == "True" and "minilm-copy" in duplicate["message"]
    assert ("Warning", "DuplicateEntry") in [(e.type, e.reason) for e in decision.events]
    assert placed(decision.status, 1, _placed(result, duplicates=("minilm-copy",))).events == ()
    # The other model went: the condition goes with it.
    alone = placed(decision.status, 1, _placed(result))
    assert _condition(alone.status, "DuplicateEntry") is None


def test_a_moved_model_keeps_its_old_target_until_it_is_unloaded():
    old = {"pool": "gpu-b", "entry": "minilm"}
    moving = placed({"pool": "gpu-b"}, 2, _placed(PlacementResult(), moved_from=old))
    assert moving.status["movedFrom"] == old and moving.status["pool"] == "gpu-a"
    done = placed(moving.status, 2, _placed(PlacementResult(loaded_on=["gpu-a-0"])))
    assert done.status["movedFrom"] is None  # merge patch: removes the field


def test_an_invalid_model_is_announced_once_per_generation():
    first = invalid({}, 1, "TooLarge", "needs 900 MiB", phase="Failed")
    assert first.status["phase"] == "Failed"
    assert _condition(first.status, "Valid")["reason"] == "TooLarge"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "TooLarge")]
    assert invalid(first.status, 1, "TooLarge", "needs 900 MiB").events == ()
    assert len(invalid(first.status, 2, "TooLarge", "needs 900 MiB").events) == 1


def test_a_deleted_pool_clears_the_placement_and_says_pool_not_found():
    previous = placed({}, 1, _placed(PlacementResult(loaded_on=["gpu-a-0", "gpu-a-1"]))).status
    decision = invalid(previous, 1, "PoolNotFound", "gone", "Pending", clear_placement=True)
    status = decision.status
    assert status["phase"] == "Pending"
    for key in ("pool", "entry", "replicas", "loadedReplicas"):
        assert status[key] is None, key
    assert _condition(status, "Loaded") is None
    assert _condition(status, "Valid")["reason"] == "PoolNotFound"
    assert [e.reason for e in decision.events] == ["PoolNotFound"]


def test_an_invalid_entry_and_a_load_timeout_are_their_own_reasons_announced_once():
    invalid = PlacementResult(invalid_entry="minilm: model.py missing; run shoal repo check")
    first = placed({}, 1, _placed(invalid, ready_replicas=1))
    loaded = _condition(first.status, "Loaded")
    assert (first.status["phase"], loaded["reason"]) == ("Failed", "EntryInvalid")
    assert "model.py missing" in first.status["lastError"] and first.retry
    assert placed(first.status, 1, _placed(invalid, 1, allow_evict=False)).events == ()
    slow = PlacementResult(timed_out={"gpu-a-0": "load exceeded 30 s"})
    timed = placed({}, 1, _placed(slow, ready_replicas=1))
    assert _condition(timed.status, "Loaded")["reason"] == "LoadTimeout"
    assert "30 s" in timed.status["lastError"] and timed.metric_reason == "LoadTimeout"
