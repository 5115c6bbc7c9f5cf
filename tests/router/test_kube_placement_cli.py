"""`shoal router run --namespace NS` as a cluster runs it, on the real kube-apiserver with a real
Triton replica in a network namespace: it routes an InferenceModel's entry to the replica its
status names, serves KEDA's scaler, stops on SIGTERM; bad flags and a missing kubeconfig get a
one-line error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from shoal.router.externalscaler import externalscaler_pb2 as pb
from shoal.router.externalscaler import externalscaler_pb2_grpc as pb_grpc
from shoal.runtime.triton import free_port
from tests.support.kube import wait_for
from tests.support.triton import write_doubler

pytestmark = [pytest.mark.kube, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(180)]
SHOAL = str(Path(sys.executable).parent / "shoal")  # the console script
POOL = "gpu-a"


def shoal(*args: str, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    return subprocess.Popen(
        [SHOAL, *args], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_cluster_mode_routes_by_status_and_serves_the_scaler(
    kube, kube_cluster, start_replica, tmp_path
):
    repository = tmp_path / "repository"
    write_doubler(repository, "alpha")
    replica = start_replica(repository)
    httpx.post(f"{replica.http_url}/v2/repository/models/alpha/load", timeout=60).raise_for_status()
    kube.create("inferencemodels", "InferenceModel", "alpha", {"pool": POOL}).raise_for_status()
    kube.http.patch(
        kube._custom("inferencemodels", "alpha") + "/status",
        json={"status": {"pool": POOL, "replicas": ["gpu-a-0"]}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    kube.write_endpoints(POOL, {"gpu-a-0": replica})
    http_port, scaler_port = free_port(), free_port()
    process = shoal(
        "router", "run", "--namespace", kube.namespace, "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", "-1", "--metrics-port", "-1",
        "--scaler-port", str(scaler_port),
        KUBECONFIG=str(kube_cluster.kubeconfig),
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: answers(f"{base}/v2/health/live"), 60, what="router listening")
        body = {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
        answer = httpx.post(f"{base}/v2/models/alpha/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [2.0, 4.0]
        with grpc.insecure_channel(f"127.0.0.1:{scaler_port}") as channel:
            ref = pb.ScaledObjectRef(name=POOL, namespace=kube.namespace)
            assert pb_grpc.ExternalScalerStub(channel).IsActive(ref, timeout=10).result is False
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output


@pytest.mark.parametrize(
    ("flags", "env", "words"),
    [
        (["--route", "a=http://10.0.0.5:8000"], {}, "drop --route"),
        (["--workers", "2"], {}, "scale routers by pods"),
        ([], {"KUBECONFIG": "/nonexistent/kubeconfig"}, "$KUBECONFIG"),
    ],
)
def test_bad_cluster_flags_get_a_one_line_error(flags, env, words):
    process = shoal("router", "run", "--namespace", "team-a", *flags, **env)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2, output
    assert words in output and "Traceback" not in output
