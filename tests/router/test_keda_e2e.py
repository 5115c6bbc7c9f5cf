"""Scale from zero, end to end on the real kube-apiserver, with the operator, the router (cluster
placement source + KEDA scaler) and a real Triton replica in a network namespace. KEDA does not
run here: the test does what KEDA would, through the ScaledObject the operator wrote (its
external-push trigger's address and metadata), and scales the Deployment itself; with no kubelet,
it starts the replica and publishes it in the pool's Endpoints as the endpoints controller would.

pool at 0 replicas -> a request held at the router -> StreamIsActive true (<= 1 s) -> Deployment
scaled to 1 -> replica in the Endpoints -> the operator loads the model -> the request answered.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np
import pytest
import tritonclient.http.aio as httpaio

from shoal.router.externalscaler import externalscaler_pb2 as pb
from shoal.router.externalscaler import externalscaler_pb2_grpc as pb_grpc
from shoal.router.keda_scaler import KedaScalerServer
from shoal.router.kube_placement import KubePlacement
from shoal.router.server import RouterServer
from shoal.router.settings import RouterSettings
from shoal.runtime.triton import free_port
from tests.operator import test_autoscaling_e2e as autoscaling_e2e
from tests.operator.entries import write_entry
from tests.operator.helpers import infer, pool_spec
from tests.router.kube_support import api_client
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]
log = logging.getLogger(__name__)
POOL = "gpu-a"
DEPLOYMENT = "/apis/apps/v1/namespaces/{ns}/deployments/gpu-a"
MiB = 2**20
SCALED_OBJECT = autoscaling_e2e.SCALED_OBJECT
install_keda_crd = autoscaling_e2e.install_keda_crd  # a fixture: serves scaledobjects.keda.sh


def scale_deployment(kube, replicas: int) -> None:
    """What KEDA does to the ScaledObject's target."""
    kube.http.patch(
        DEPLOYMENT.format(ns=kube.namespace),
        json={"spec": {"replicas": replicas}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()


async def held_infer(address: str, model: str) -> np.ndarray:
    client = httpaio.InferenceServerClient(address)
    try:
        tensor = httpaio.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"hello"]], dtype=object))
        return (await client.infer(model, [tensor])).as_numpy("EMBEDDING")
    finally:
        await client.close()


async def test_a_held_request_wakes_a_pool_at_zero_and_is_answered(
    kube,
    kube_cluster,
    run_operator,
    start_replica,
    install_keda_crd,
    tmp_path,
):
    repository = tmp_path / "repository"
    write_entry(repository, "minilm", 100 * MiB)
    scaler_port = free_port()
    install_keda_crd()
    autoscaling = {"routerScalerAddress": f"127.0.0.1:{scaler_port}", "threshold": 1}
    spec = pool_spec(repository, "1Gi", replicas={"min": 0, "max": 2}, autoscaling=autoscaling)
    api = await api_client(kube_cluster.kubeconfig)
    source = KubePlacement(api, kube.namespace)
    settings = RouterSettings(host="127.0.0.1", http_port=0, grpc_port=None, metrics_port=None)
    router = scaler = None
    with run_operator():
        try:
            kube.create("inferencepools", "InferencePool", POOL, spec).raise_for_status()
            scaled = await asyncio.to_thread(
                wait_for, lambda: kube.get_core(SCALED_OBJECT), 30, what="ScaledObject"
            )
            (trigger,) = scaled["spec"]["triggers"]
            assert trigger["type"] == "external-push"
            assert kube.get_core(DEPLOYMENT)["spec"]["replicas"] == 0
            kube.create(
                "inferencemodels", "InferenceModel", "minilm", {"pool": POOL}
            ).raise_for_status()

            await source.start()
            router = await RouterServer(source, settings).start()
            scaler = KedaScalerServer(
                router.router, port=scaler_port, host="127.0.0.1", namespace=kube.namespace
            )
            await scaler.start()

            # KEDA: connect to the trigger's scalerAddress with the ScaledObject's reference.
            ref = pb.ScaledObjectRef(
                name=scaled["metadata"]["name"],
                namespace=kube.namespace,
                scalerMetadata=trigger["metadata"],
            )
            async with grpc.aio.insecure_channel(trigger["metadata"]["scalerAddress"]) as channel:
                keda = pb_grpc.ExternalScalerStub(channel)
                stream = keda.StreamIsActive(ref).__aiter__()
                assert (await asyncio.wait_for(stream.__anext__(), 5)).result is False

                started = time.monotonic()
                request = asyncio.create_task(held_infer(router.http_address, "minilm"))
                assert (await asyncio.wait_for(stream.__anext__(), 5)).result is True
                active_after = time.monotonic() - started
                log.info("first held request -> StreamIsActive true: %.0f ms", active_after * 1000)
                assert active_after <= 1.0
                values = await keda.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref))
                assert values.metricValues[0].metricValue == 1  # one request held
                spec_answer = await keda.GetMetricSpec(ref)
                assert spec_answer.metricSpecs[0].targetSizeFloat == 1.0

                # KEDA scales the Deployment; the pod starts and its address joins the Endpoints.
                await asyncio.to_thread(scale_deployment, kube, 1)
                replica = await asyncio.to_thread(start_replica, repository)
                await asyncio.to_thread(kube.write_endpoints, POOL, {"gpu-a-0": replica})

                answer = await asyncio.wait_for(request, 90)
                total = time.monotonic() - started
                log.info("held request answered %.2f s after it was sent (pool from zero)", total)
                np.testing.assert_allclose(
                    answer.reshape(-1), np.asarray(infer(replica, "minilm")), rtol=1e-5
                )
                # Demand gone: KEDA hears "inactive" (and would scale to zero after cooldown).
                assert (await asyncio.wait_for(stream.__anext__(), 5)).result is False
        finally:
            if scaler is not None:
                await scaler.stop()
            if router is not None:
                await router.stop()
            await source.close()
            await api.close()
