"""InferenceModel against a real kube-apiserver and real Triton replicas: placement, status,
eviction, deletion, drift repair, restarts, failures."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import REGISTRY

from tests.operator.entries import EMBEDDING_DIMS, write_entry
from tests.operator.helpers import create_pool, infer, loaded_entries, pool_spec
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.triton, pytest.mark.slow]
log = logging.getLogger(__name__)
MiB = 2**20
POOL = "gpu-a"


def _status(kube, name):
    return (kube.get("inferencemodels", name) or {}).get("status") or {}


def _wait_phase(kube, name, phase, timeout=60):
    return wait_for(
        lambda: (s := _status(kube, name)).get("phase") == phase and s,
        timeout,
        what=f"{name} phase {phase} (status: {_status(kube, name)})",
    )


def _condition(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def _metric(name):
    """Sum of a metric over its labels, from the operator's registry (same process)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    )


def _model(kube, name, **spec):
    kube.create(
        "inferencemodels", "InferenceModel", name, {"pool": POOL, **spec}
    ).raise_for_status()


def test_model_is_loaded_on_min_replicas_and_ready_with_status_filled(
    kube, run_operator, repository, start_replica
):
    write_entry(repository, "minilm", 100 * MiB)
    replicas = {"gpu-a-0": start_replica(repository), "gpu-a-1": start_replica(repository)}
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
        ).raise_for_status()
        kube.write_endpoints(POOL, replicas)
        started = time.monotonic()
        _model(kube, "minilm", minReplicas=2)
        loads_before = _metric("shoal_operator_loads_total")
        _wait_phase(kube, "minilm", "Loading", timeout=20)  # shown while Triton loads
        status = _wait_phase(kube, "minilm", "Ready")
        log.info(
            "InferenceModel created -> Ready on 2 replicas in %.2f s", time.monotonic() - started
        )
        assert status["replicas"] == ["gpu-a-0", "gpu-a-1"]
        assert status["loadedReplicas"] == 2
        assert status["pool"] == POOL
        assert status["memoryBytes"] == 100 * MiB  # from the entry's manifest
        assert status["observedGeneration"] == 1
        assert _condition(status, "Ready")["status"] == "True"
        for server in replicas.values():
            assert {
                "minilm",
                "minilm__tokenize",
                "minilm__encode",
                "minilm__postprocess",
            } <= loaded_entries(server)
            assert len(infer(server, "minilm")) == EMBEDDING_DIMS
        assert _metric("shoal_operator_loads_total") == loads_before + 2
        assert _metric("shoal_operator_load_seconds_count") >= 2
        # `kubectl get inferencemodels` shows the printer columns.
        table = kube.http.get(
            f"/apis/shoal.dev/v1alpha1/namespaces/{kube.namespace}/inferencemodels",
            headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        ).json()
        columns = [c["name"] for c in table["columnDefinitions"]]
        row = dict(zip(columns, table["rows"][0]["cells"], strict=True))
        assert (row["Phase"], row["Pool"], row["Loaded"], row["Min"]) == ("Ready", POOL, 2, 2)
        # Last use comes from Triton's statistics, refreshed by the drift timer.
        wait_for(lambda: _status(kube, "minilm").get("lastUsed"), 40, what="lastUsed")


def test_failing_load_reports_tritons_message_and_retries_until_fixed(
    kube, run_operator, repository, start_replica
):
    write_entry(repository, "broken", 50 * MiB, broken="TinyEncoderWeightsMissing")
    replicas = {"gpu-a-0": start_replica(repository)}
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
        ).raise_for_status()
        kube.write_endpoints(POOL, replicas)
        _model(kube, "broken")
        status = _wait_phase(kube, "broken", "Failed")
        assert "TinyEncoderWeightsMissing" in status["lastError"]
        loaded = _condition(status, "Loaded")
        assert loaded["reason"] == "LoadFailed" and "TinyEncoderWeightsMissing" in loaded["message"]
        # No residue: the steps that did load were unloaded again.
        assert not any(m.startswith("broken") for m in loaded_entries(replicas["gpu-a-0"]))
        wait_for(
            lambda: replicas["gpu-a-0"].log_text().count("failed to load 'broken__encode'") >= 3,
            30,
            what="retried loads (three attempts in Triton's log)",
        )
        # Retried, yet announced once: one broken model is one warning, not one per attempt.
        warnings = [e for e in kube.events("broken") if e["reason"] == "LoadFailed"]
        assert len(warnings) == 1 and warnings[0].get("count", 1) == 1, [
            (e["message"][:150], e.get("count"), e.get("firstTimestamp")) for e in warnings
        ]
        # Fix the entry: the next retry loads it.
        write_entry(repository, "broken", 50 * MiB)
        status = _wait_phase(kube, "broken", "Ready", timeout=60)
        assert status["loadedReplicas"] == 1
        assert not status.get("lastError")


def test_memory_pressure_evicts_the_least_recently_used_and_never_a_pinned_model(
    kube, run_operator, repository, start_replica
):
    for name in ("pinned", "old", "recent", "newcomer"):
        write_entry(repository, name, 100 * MiB)
    replica = start_replica(repository)
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "350Mi")
        ).raise_for_status()
        kube.write_endpoints(POOL, {"gpu-a-0": replica})
        _model(kube, "pinned", pinned=True)
        _wait_phase(kube, "pinned", "Ready")
        _model(kube, "old")
        _wait_phase(kube, "old", "Ready")
        _model(kube, "recent")
        _wait_phase(kube, "recent", "Ready")
        infer(replica, "recent")  # "pinned" is used least recently of all, then "old"
        _model(kube, "newcomer")  # 400 MiB wanted on a 350 MiB replica: one must go
        _wait_phase(kube, "newcomer", "Ready")
        # The victim's replica list (what the router routes by) is corrected by the eviction
        # itself, not at the victim's next drift run.
        wait_for(
            lambda: _status(kube, "old").get("replicas") == [], 2, what="old's replicas emptied"
        )
        assert {"pinned", "recent", "newcomer"} <= loaded_entries(replica)
        # Hot swap: only the memory-heavy encode step goes; the light steps stay for a fast reload.
        loaded = loaded_entries(replica)
        assert not {"old", "old__encode"} & loaded
        assert {"old__tokenize", "old__postprocess"} <= loaded
        status = _wait_phase(kube, "old", "Evicted", timeout=30)
        assert status["loadedReplicas"] == 0
        assert _condition(status, "Loaded")["reason"] == "Evicted"
        evictions = [e["message"] for e in kube.events("newcomer") if e["reason"] == "Evicted"]
        assert evictions and "evicted old from replica gpu-a-0" in evictions[0]
        assert any(e["reason"] == "Evicted" for e in kube.events("old"))
        # The evicted model does not evict back (no ping-pong) while the drift timer runs.
        time.sleep(5)
        assert {"pinned", "recent", "newcomer"} <= loaded_entries(replica)
        assert _status(kube, "old")["phase"] == "Evicted"


def test_a_broken_entry_is_never_handed_to_triton_and_blocks_no_other_model(
    kube, run_operator, repository, start_replica
):
    # A python step without its model.py hangs Triton's load, and every load behind it.
    write_entry(repository, "torn", 50 * MiB)
    (repository / "torn__tokenize" / "1" / "model.py").unlink()
    write_entry(repository, "whole", 50 * MiB)
    replica = start_replica(repository)
    with run_operator():
        create_pool(kube, repository, {"gpu-a-0": replica})
        _model(kube, "torn")
        _model(kube, "whole")
        status = _wait_phase(kube, "torn", "Failed")
        loaded = _condition(status, "Loaded")
        assert loaded["reason"] == "EntryInvalid"
        assert "torn__tokenize/1/model.py is missing" in loaded["message"]
        assert "shoal repo check" in loaded["message"]
        _wait_phase(kube, "whole", "Ready")
        assert not any(m.startswith("torn") for m in loaded_entries(replica))  # never asked
        assert len([e for e in kube.events("torn") if e["reason"] == "EntryInvalid"]) == 1


def test_model_too_large_for_any_replica_is_reported_not_loaded(
    kube, run_operator, repository, start_replica
):
    write_entry(repository, "huge", 900 * MiB)
    replica = start_replica(repository)
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
        ).raise_for_status()
        kube.write_endpoints(POOL, {"gpu-a-0": replica})
        _model(kube, "huge")
        status = _wait_phase(kube, "huge", "Failed")
        valid = _condition(status, "Valid")
        assert valid["reason"] == "TooLarge"
        assert "900.0 MiB" in valid["message"] and "memoryPerReplica" in valid["message"]
        assert not any(m.startswith("huge") for m in loaded_entries(replica))
        # A person raises the budget: the drift timer places it.
        kube.patch_spec("inferencepools", POOL, {"memoryPerReplica": "1Gi"})
        _wait_phase(kube, "huge", "Ready", timeout=60)


def test_unknown_pool_and_missing_memory_are_reported_with_what_to_do(
    kube, run_operator, repository
):
    with run_operator():
        _model(kube, "orphan")
        status = _wait_phase(kube, "orphan", "Pending")
        valid = _condition(status, "Valid")
        assert valid["reason"] == "PoolNotFound" and "create it" in valid["message"]
        spec = pool_spec(repository, "1Gi")
        del spec["storage"]["localPath"]  # the operator cannot read manifests
        kube.create("inferencepools", "InferencePool", POOL, spec).raise_for_status()
        wait_for(
            lambda: _condition(_status(kube, "orphan"), "Valid")["reason"] == "MemoryUnknown",
            30,
            what="MemoryUnknown",
        )
        assert "set spec.memory" in _condition(_status(kube, "orphan"), "Valid")["message"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"entry": "x"}, "spec"),  # neither pool nor gpuClass
        ({"pool": "p", "minReplicas": -1}, "spec.minReplicas"),
        ({"pool": "p", "memory": "a lot"}, "spec.memory"),
        ({"pool": "p", "entry": "bad name/"}, "spec.entry"),
        ({"pool": "p", "minReplicas": 1000000000}, "spec.minReplicas"),
        ({"pool": "p", "memory": "99999999999999999999Ei"}, "spec.memory"),
        ({"pool": "pool.v2"}, "spec.pool"),
        ({"pool": "p", "priority": 10**12}, "spec.priority"),
    ],
)
def test_schema_rejects_invalid_models(kube, spec, expected):
    response = kube.create("inferencemodels", "InferenceModel", "bad", spec)
    assert response.status_code == 422, response.text
    assert expected in response.json()["message"]


def test_delete_unloads_everywhere_and_removes_the_object(
    kube, run_operator, repository, start_replica
):
    write_entry(repository, "gone", 50 * MiB)
    write_entry(repository, "stays", 50 * MiB)
    replicas = {"gpu-a-0": start_replica(repository), "gpu-a-1": start_replica(repository)}
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
        ).raise_for_status()
        kube.write_endpoints(POOL, replicas)
        _model(kube, "gone", minReplicas=2)
        _model(kube, "stays", minReplicas=2)
        _wait_phase(kube, "gone", "Ready")
        _wait_phase(kube, "stays", "Ready")
        kube.delete("inferencemodels", "gone")
        wait_for(lambda: kube.get("inferencemodels", "gone") is None, 30, what="object deleted")
        for server in replicas.values():
            loaded = loaded_entries(server)
            assert not any(m.startswith("gone") for m in loaded), loaded
            assert "stays" in loaded


def test_restarted_triton_gets_its_models_back(kube, run_operator, repository, start_replica):
    write_entry(repository, "sticky", 50 * MiB)
    replica = start_replica(repository)
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
        ).raise_for_status()
        kube.write_endpoints(POOL, {"gpu-a-0": replica})
        _model(kube, "sticky")
        _wait_phase(kube, "sticky", "Ready")
        replica.stop()
        # Same pod (same namespace and address), new container: empty.
        restarted = start_replica(repository, host=replica.host)
        kube.write_endpoints(POOL, {"gpu-a-0": restarted})
        wait_for(
            lambda: "sticky" in loaded_entries(restarted),
            60,
            what="sticky reloaded by drift repair",
        )
        assert len(infer(restarted, "sticky")) == EMBEDDING_DIMS
        assert _status(kube, "sticky")["phase"] == "Ready"


def test_operator_restart_repeats_no_completed_work(kube, run_operator, repository, start_replica):
    write_entry(repository, "once", 50 * MiB)
    replica = start_replica(repository)
    kube.create(
        "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
    ).raise_for_status()
    kube.write_endpoints(POOL, {"gpu-a-0": replica})
    with run_operator():
        _model(kube, "once")
        _wait_phase(kube, "once", "Ready")
    loads_before = replica.log_text().count("successfully loaded 'once'")
    assert loads_before == 1
    deployment = kube.get_core("/apis/apps/v1/namespaces/{ns}/deployments/" + POOL)
    with run_operator() as runner:
        time.sleep(6)  # resume handlers and a few drift and status timers run
        assert _status(kube, "once")["phase"] == "Ready"
    assert replica.log_text().count("successfully loaded 'once'") == loads_before
    assert replica.log_text().count("successfully unloaded") == 0
    again = kube.get_core("/apis/apps/v1/namespaces/{ns}/deployments/" + POOL)
    assert again["metadata"]["resourceVersion"] == deployment["metadata"]["resourceVersion"]
    assert "Handler 'inferencemodel_resume' succeeded" in runner.output


def test_unreachable_replica_is_reported_and_retried(kube, run_operator, repository, netns_host):
    write_entry(repository, "lonely", 50 * MiB)
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
        ).raise_for_status()

        class Gone:  # a pod whose Triton is not listening (crashed, not yet restarted)
            bind_address = netns_host().address  # the pod's host is up, refusing connections
            http_port = 8000
            metrics_port = 8002

        kube.write_endpoints(POOL, {"gpu-a-0": Gone})
        _model(kube, "lonely")
        wait_for(
            lambda: (
                (c := _status(kube, "lonely").get("conditions"))
                and _condition({"conditions": c}, "Loaded")["reason"] == "ReplicaUnreachable"
            ),
            60,
            what="ReplicaUnreachable condition",
        )
        status = _status(kube, "lonely")
        assert status["phase"] == "Pending"
        assert "gpu-a-0" in _condition(status, "Loaded")["message"]


def test_model_selects_a_pool_by_gpu_class_and_waits_for_replicas(kube, run_operator, repository):
    write_entry(repository, "classy", 50 * MiB)
    with run_operator():
        spec = pool_spec(repository, "1Gi", gpuClass="a10g")
        kube.create("inferencepools", "InferencePool", POOL, spec).raise_for_status()
        kube.create(
            "inferencemodels", "InferenceModel", "classy", {"gpuClass": "a10g"}
        ).raise_for_status()
        wait_for(
            lambda: (
                (s := _status(kube, "classy")).get("conditions")
                and _condition(s, "Loaded")["reason"] == "NoReplicas"
            ),
            30,
            what="NoReplicas",
        )
        status = _status(kube, "classy")
        assert status["pool"] == POOL and status["phase"] == "Pending"
        assert "no ready replicas" in _condition(status, "Loaded")["message"]
