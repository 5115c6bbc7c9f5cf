"""InferenceModel against a real kube-apiserver and real Triton replicas: placement, status,
eviction, deletion, drift repair, restarts, failures."""

from __future__ import annotations

import logging
import time

import pytest

from tests.operator.entries import write_entry
from tests.operator.helpers import infer, loaded_entries, pool_spec
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
            assert infer(server, "minilm") == [7.0]
        # Last use comes from Triton's statistics, refreshed by the drift timer.
        wait_for(lambda: _status(kube, "minilm").get("lastUsed"), 20, what="lastUsed")


def test_failing_load_reports_tritons_message_and_retries_until_fixed(
    kube, run_operator, repository, start_replica
):
    write_entry(repository, "broken", 50 * MiB, broken="tiny encoder weights missing")
    replicas = {"gpu-a-0": start_replica(repository)}
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", POOL, pool_spec(repository, "250Mi")
        ).raise_for_status()
        kube.write_endpoints(POOL, replicas)
        _model(kube, "broken")
        status = _wait_phase(kube, "broken", "Failed")
        assert "tiny encoder weights missing" in status["lastError"]
        loaded = _condition(status, "Loaded")
        assert (
            loaded["reason"] == "LoadFailed" and "tiny encoder weights missing" in loaded["message"]
        )
        # No residue: the steps that did load were unloaded again.
        assert not any(m.startswith("broken") for m in loaded_entries(replicas["gpu-a-0"]))
        wait_for(
            lambda: (
                sum(e.get("count", 1) for e in kube.events("broken") if e["reason"] == "LoadFailed")
                >= 2
            ),
            30,
            what="a retried load (two LoadFailed events)",
        )
        # Fix the entry: the next retry loads it.
        write_entry(repository, "broken", 50 * MiB)
        status = _wait_phase(kube, "broken", "Ready", timeout=60)
        assert status["loadedReplicas"] == 1
        assert not status.get("lastError")
