"""A re-exported entry is rolled out replica by replica with no failed request: the real
kube-apiserver, the operator, two real Triton replicas in network namespaces and the router in
front, with a client calling the model through the router all along.

The re-export is what `shoal export --overwrite` does to a local repository: version 2 of the
entry's four Triton models staged aside and swapped in whole (shoal.model_repository.install)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from shoal.model_repository.install import install_entry
from shoal.model_repository.layout import EntryLayout
from shoal.router.kube_placement import KubePlacement
from shoal.router.server import RouterServer
from shoal.router.settings import RouterSettings
from tests.operator.entries import write_entry
from tests.operator.helpers import model_status, pool_spec
from tests.router.kube_support import api_client
from tests.router.test_keda_e2e import held_infer
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(240)]
MiB = 2**20
POOL = "gpu-a"
ROLLOUT_S = 90  # both replicas reloaded (each reload ~3-10 s on 2 cores) after the drift timer


def served(replica, model: str) -> str | None:
    index = httpx.post(f"{replica.http_url}/v2/repository/index", json={}, timeout=10).json()
    ready = [m for m in index if m["name"] == model and m.get("state") == "READY"]
    return ready[0].get("version") if ready else None


async def test_a_new_version_rolls_out_replica_by_replica_without_a_failed_request(
    kube, kube_cluster, run_operator, start_replica, tmp_path
):
    repository = tmp_path / "repository"
    write_entry(repository, "rolled", 50 * MiB)
    replicas = {"gpu-a-0": start_replica(repository), "gpu-a-1": start_replica(repository)}
    api = await api_client(kube_cluster.kubeconfig)
    source = KubePlacement(api, kube.namespace, repository=repository)  # the router's mount
    settings = RouterSettings(host="127.0.0.1", http_port=0, grpc_port=None, metrics_port=None)
    router = None

    def status_says(version: str) -> bool:
        status = model_status(kube, "rolled")
        return status.get("servedVersion") == version and status.get("loadedReplicas") == 2

    with run_operator():
        try:
            spec = pool_spec(repository, "1Gi", replicas={"min": 2, "max": 2})
            kube.create("inferencepools", "InferencePool", POOL, spec).raise_for_status()
            kube.write_endpoints(POOL, replicas)
            kube.create(
                "inferencemodels", "InferenceModel", "rolled", {"pool": POOL, "minReplicas": 2}
            ).raise_for_status()
            await asyncio.to_thread(wait_for, lambda: status_says("1"), 60, what="version 1")
            await source.start()
            router = await RouterServer(source, settings).start()

            outcomes: list[Exception | None] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    try:
                        await held_infer(router.http_address, "rolled")
                        outcomes.append(None)
                    except Exception as exc:  # noqa: BLE001  (every failure is the finding)
                        outcomes.append(exc)

            calling = asyncio.create_task(client())
            await asyncio.sleep(1.0)
            before = len(outcomes)

            staging = tmp_path / "staging"
            write_entry(staging, "rolled", 50 * MiB, version=2)
            install_entry(
                EntryLayout(staging, "rolled", 2), EntryLayout(repository, "rolled", 2), tmp_path
            )
            started = time.monotonic()
            await asyncio.to_thread(
                wait_for, lambda: status_says("2"), ROLLOUT_S, what="version 2 everywhere"
            )
            took = time.monotonic() - started
            await asyncio.sleep(1.0)  # requests after the rollout too
            stop.set()
            await calling
            # The router reads the new manifest (the /v1 endpoints' view of the entry).
            assert source.route("rolled").manifest.version == 2
        finally:
            if router is not None:
                await router.stop()
            await source.close()
            await api.close()

    failures = [o for o in outcomes if o is not None]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:3]}"
    assert len(outcomes) - before >= 10  # the client kept calling through the rollout
    assert {served(r, "rolled") for r in replicas.values()} == {"2"}
    assert {served(r, "rolled__encode") for r in replicas.values()} == {"2"}
    rolling = [e for e in kube.events("rolled") if e["reason"] == "RollingOut"]
    assert len(rolling) == 2, [e["message"] for e in rolling]
    print(f"rolled out in {took:.1f} s, {len(outcomes)} requests, none failed")


def test_a_new_version_that_fails_to_load_is_reported_as_it_is(
    kube, run_operator, start_replica, tmp_path
):
    """Version 2 whose graph onnxruntime cannot load (it passes the entry check: its files are
    whole). Triton cannot fall back to version 1, whose files the swap removed, so the entry is
    down on that replica; the model says so: LoadFailed with Triton's message, no replica listed
    (the router holds its requests instead of sending them there), not Ready."""
    repository = tmp_path / "repository"
    write_entry(repository, "kept", 50 * MiB)
    replica = start_replica(repository)

    def status() -> dict:
        return model_status(kube, "kept")

    with run_operator():
        spec = pool_spec(repository, "1Gi")
        kube.create("inferencepools", "InferencePool", POOL, spec).raise_for_status()
        kube.write_endpoints(POOL, {"gpu-a-0": replica})
        kube.create("inferencemodels", "InferenceModel", "kept", {"pool": POOL})
        wait_for(lambda: status().get("servedVersion") == "1", 60, what="version 1")

        staging = tmp_path / "staging"
        write_entry(staging, "kept", 50 * MiB, broken="NoSuchOperator", version=2)
        install_entry(
            EntryLayout(staging, "kept", 2), EntryLayout(repository, "kept", 2), tmp_path
        )
        loaded = wait_for(
            lambda: next((c for c in status().get("conditions") or []
                          if c["type"] == "Loaded" and c["reason"] == "LoadFailed"), None),
            ROLLOUT_S, what="LoadFailed",
        )  # fmt: skip
        assert "Triton failed to load kept" in loaded["message"]
        assert served(replica, "kept") is None
        current = status()
        assert current["replicas"] == [] and current["phase"] != "Ready"
        assert current.get("lastError")
