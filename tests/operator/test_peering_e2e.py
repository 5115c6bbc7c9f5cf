"""Two `shoal operator run` processes against one real kube-apiserver: only the earlier one acts,
the later one says it waits (and does nothing while the first is frozen but alive for the
peering), and takes over within seconds when the first one stops."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.operator.helpers import pool_spec
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube]
log = logging.getLogger(__name__)
SRC = Path(__file__).resolve().parents[2] / "src"
DEPLOYMENT = "/apis/apps/v1/namespaces/{ns}/deployments/"


class Operator:
    """`shoal operator run` in its own process, its log in a file."""

    def __init__(self, namespace: str, kubeconfig: Path, log_path: Path) -> None:
        self.log_path = log_path
        env = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "KUBECONFIG": str(kubeconfig),
            "SHOAL_OPERATOR_PEERING_LIFETIME_S": "20",  # keep-alives every 10-15 s
        }
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli", "operator", "run", "-n", namespace,
                 "--metrics-port", "0"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def test_only_the_earliest_operator_acts_and_a_waiting_one_takes_over(
    kube, kube_cluster, repository, tmp_path
):
    def deployment(name):
        return kube.get_core(DEPLOYMENT + name)

    def pool(name):
        spec = pool_spec(repository, "1Gi")
        kube.create("inferencepools", "InferencePool", name, spec).raise_for_status()

    first = Operator(kube.namespace, kube_cluster.kubeconfig, tmp_path / "first.log")
    second = None
    try:
        pool("gpu-a")
        wait_for(lambda: deployment("gpu-a"), 60, what="gpu-a applied by the first operator")
        second = Operator(kube.namespace, kube_cluster.kubeconfig, tmp_path / "second.log")
        wait_for(
            lambda: "another shoal operator is active" in second.log(), 60, what="second waits"
        )
        # Freeze the first operator (alive for the peering: its last keep-alive is recent) and
        # watch for 3 s: the second one must not act on a new pool in its place.
        first.process.send_signal(signal.SIGSTOP)
        pool("gpu-b")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert deployment("gpu-b") is None, "the waiting operator acted"
            time.sleep(0.2)
        first.process.send_signal(signal.SIGCONT)
        wait_for(lambda: deployment("gpu-b"), 30, what="gpu-b applied by the first operator")
        created = f"Created Deployment {kube.namespace}/gpu-b"
        wait_for(lambda: created in first.log(), 10, what="the first operator's log of gpu-b")
        assert "gpu-b" not in second.log()
        first.stop()
        took = time.monotonic()
        wait_for(lambda: "Resuming operations" in second.log(), 30, what="second takes over")
        pool("gpu-c")
        wait_for(lambda: deployment("gpu-c"), 30, what="gpu-c applied by the second operator")
        log.info("the second operator took over in %.1f s", time.monotonic() - took)
        created = f"Created Deployment {kube.namespace}/gpu-c"
        wait_for(lambda: created in second.log(), 10, what="the second operator's log of gpu-c")
        assert "Traceback" not in first.log() + second.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()
