"""Pure pieces of the operator: Endpoints -> replicas, conditions, entry names."""

from __future__ import annotations

from shoal.fleet.hot_swap import entry_of
from shoal.fleet.placer import triton_models
from shoal.fleet.replica import Replica
from shoal.operator.conditions import set_condition, status_changes
from shoal.operator.replicas import replicas_from_endpoints


def test_replicas_are_named_after_their_pods_and_not_ready_addresses_are_skipped():
    endpoints = {
        "subsets": [
            {
                "addresses": [
                    {"ip": "10.0.0.5", "targetRef": {"kind": "Pod", "name": "pool-b"}},
                    {"ip": "10.0.0.4", "targetRef": {"kind": "Pod", "name": "pool-a"}},
                ],
                "notReadyAddresses": [{"ip": "10.0.0.6", "targetRef": {"name": "pool-c"}}],
                "ports": [
                    {"name": "grpc", "port": 8001},
                    {"name": "http", "port": 8000},
                    {"name": "metrics", "port": 8002},
                ],
            }
        ]
    }
    assert replicas_from_endpoints(endpoints) == [
        Replica("pool-a", "10.0.0.4", 8000, 8002, 8001),
        Replica("pool-b", "10.0.0.5", 8000, 8002, 8001),
    ]
    assert replicas_from_endpoints(endpoints)[0].http_url == "http://10.0.0.4:8000"
    assert replicas_from_endpoints(endpoints)[0].grpc_target == "10.0.0.4:8001"


def test_no_endpoints_means_no_replicas_and_addresses_without_pods_use_ip_and_port():
    assert replicas_from_endpoints(None) == []
    assert replicas_from_endpoints({"subsets": None}) == []
    bare = {
        "subsets": [{"addresses": [{"ip": "10.1.1.1"}], "ports": [{"name": "http", "port": 9000}]}]
    }
    (replica,) = replicas_from_endpoints(bare)
    assert replica.name == "10.1.1.1:9000" and replica.metrics_url is None


def test_condition_transition_time_moves_only_when_its_status_changes():
    first = set_condition(None, "Ready", False, "Loading", "loading", 1)
    first[0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    same = set_condition(first, "Ready", False, "NoCapacity", "still not", 2)
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert (same[0]["reason"], same[0]["observedGeneration"]) == ("NoCapacity", 2)
    flipped = set_condition(same, "Ready", True, "Loaded", "ok", 2)
    assert flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert flipped[0]["status"] == "True"


def test_status_changes_keeps_only_what_differs():
    assert status_changes(
        {"phase": "Ready", "replicas": ["a"]}, {"phase": "Ready", "replicas": ["a", "b"]}
    ) == {"replicas": ["a", "b"]}


def test_entry_names_map_both_ways():
    names = triton_models("minilm")
    assert names == ["minilm", "minilm__tokenize", "minilm__encode", "minilm__postprocess"]
    assert {entry_of(n) for n in names} == {"minilm"}
    assert entry_of("a__b") == "a__b"  # not a step suffix: its own entry
