"""Faults in the middle of a load, against the real kube-apiserver and real Triton replicas:
the replica's Triton SIGKILLed while it loads, a load that hangs (one model times out, the
replica's other models load), and the operator itself SIGKILLed during a load and started
again. Each asserts convergence to the spec within a stated time, with no duplicate load.

Without a kubelet, the test does what the kubelet would: it starts the killed container again in
the same pod (same network namespace and address)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from shoal.manifest import Manifest
from shoal.model_repository.entry import sha256_file
from tests.operator.entries import EMBEDDING_DIMS, write_entry
from tests.operator.helpers import (
    create_pool,
    infer,
    loaded_entries,
    model_status,
    wait_phase,
)
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]
MiB = 2**20
POOL = "gpu-a"
CONVERGE_S = 60  # what each fault test allows for the state to match the spec again

SLOW_INITIALIZE = """

_initialize = TritonPythonModel.initialize


def _slow_initialize(self, args):
    import time

    time.sleep(SECONDS)
    _initialize(self, args)


TritonPythonModel.initialize = _slow_initialize
"""


def _slow_tokenize_step(repository, entry: str, seconds: float) -> None:
    """Make the entry's tokenize step take `seconds` to initialize, and record the change in its
    manifest (as a re-export would), so the entry still passes `shoal repo check`."""
    model_py = repository / f"{entry}__tokenize" / "1" / "model.py"
    model_py.write_text(model_py.read_text() + SLOW_INITIALIZE.replace("SECONDS", str(seconds)))
    manifest_path = repository / entry / "shoal.json"
    data = json.loads(manifest_path.read_text())
    relative = model_py.relative_to(repository).as_posix()
    if relative in data["sha256"]:
        data["sha256"][relative] = sha256_file(model_py)
    manifest_path.write_text(json.dumps(data, indent=2))
    Manifest.read(repository / entry)  # still readable


def _successful_loads(server, model: str) -> int:
    return server.log_text().count(f"successfully loaded '{model}'")


def test_triton_killed_during_a_load_converges_after_its_restart(
    kube, run_operator, repository, start_replica
):
    write_entry(repository, "victim", 50 * MiB)
    _slow_tokenize_step(repository, "victim", 4)  # a window to kill it in
    replica = start_replica(repository)
    with run_operator():
        create_pool(kube, repository, {"gpu-a-0": replica})
        kube.create("inferencemodels", "InferenceModel", "victim", {"pool": POOL})
        wait_for(lambda: "victim__tokenize" in replica.log_text(), 30, what="the load under way")
        os.kill(replica.pid, signal.SIGKILL)
        replica.stop()
        started = time.monotonic()
        restarted = start_replica(repository, host=replica.host)  # the kubelet's restart
        kube.write_endpoints(POOL, {"gpu-a-0": restarted})
        status = wait_phase(kube, "victim", "Ready", CONVERGE_S)
        took = time.monotonic() - started
        assert status["replicas"] == ["gpu-a-0"]
        assert len(infer(restarted, "victim")) == EMBEDDING_DIMS
        assert _successful_loads(restarted, "victim") == 1  # loaded once, not twice
    print(f"converged {took:.1f} s after the restart")


def test_a_hanging_load_times_out_and_the_replicas_other_models_load(
    kube, run_operator, repository, start_replica, monkeypatch
):
    monkeypatch.setenv("SHOAL_LOAD_TIMEOUT_S", "20")  # a healthy load takes ~3-10 s here
    write_entry(repository, "stuck", 50 * MiB)
    _slow_tokenize_step(repository, "stuck", 3600)
    write_entry(repository, "fine", 50 * MiB)
    replica = start_replica(repository)
    with run_operator():
        create_pool(kube, repository, {"gpu-a-0": replica})
        kube.create("inferencemodels", "InferenceModel", "stuck", {"pool": POOL})
        wait_for(
            lambda: (c := _loaded_condition(kube, "stuck")) and c["reason"] == "LoadTimeout",
            60,
            what="stuck: LoadTimeout",
        )
        kube.create("inferencemodels", "InferenceModel", "fine", {"pool": POOL})
        wait_phase(kube, "fine", "Ready", timeout=CONVERGE_S)
        assert "fine" in loaded_entries(replica)
        assert "load deadline" in _loaded_condition(kube, "stuck")["message"]


def _loaded_condition(kube, name):
    return next(
        (c for c in model_status(kube, name).get("conditions") or [] if c["type"] == "Loaded"), None
    )


def test_operator_killed_during_a_load_resumes_without_loading_twice(
    kube, repository, start_replica, tmp_path
):
    write_entry(repository, "resumed", 50 * MiB)
    _slow_tokenize_step(repository, "resumed", 4)
    replica = start_replica(repository)
    create_pool(kube, repository, {"gpu-a-0": replica})

    def operator_process() -> subprocess.Popen:
        log = open(tmp_path / "operator.log", "ab")  # noqa: SIM115  (closed with the process)
        return subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "-m", "shoal.operator.handlers",
             "--standalone", "--namespace", kube.namespace],
            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip

    first = operator_process()
    try:
        kube.create("inferencemodels", "InferenceModel", "resumed", {"pool": POOL})
        wait_for(lambda: "resumed__tokenize" in replica.log_text(), 60, what="the load under way")
        first.kill()  # SIGKILL: no cleanup, no finalizer work, mid-load
        first.wait(timeout=10)
        started = time.monotonic()
        second = operator_process()
        try:
            status = wait_phase(kube, "resumed", "Ready", CONVERGE_S)
            took = time.monotonic() - started
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert status["replicas"] == ["gpu-a-0"]
    loads = [
        line for line in replica.log_text().splitlines() if "resumed" in line and "load" in line
    ]
    operator_log = (tmp_path / "operator.log").read_text(errors="replace")[-6000:]
    # The restarted operator did not load it again.
    assert _successful_loads(replica, "resumed") == 1, "\n".join(loads) + operator_log
    print(f"converged {took:.1f} s after the operator restart")


def test_status_follows_a_replica_that_restarted_empty_within_two_seconds(
    kube, repository, start_replica, tmp_path
):
    """A Triton that restarts between two readiness probes never leaves the endpoints, and no
    handler of the model runs: the placement observer sees the model gone, writes the truth
    within 2 s (the router routes by it) and loads the model back. The drift timer is set to
    5 minutes here so that it cannot be what answers."""
    write_entry(repository, "kept", 50 * MiB)
    replica = start_replica(repository)
    create_pool(kube, repository, {"gpu-a-0": replica})
    env = {**os.environ, "SHOAL_OPERATOR_DRIFT_INTERVAL_S": "300"}
    log = open(tmp_path / "operator.log", "ab")  # noqa: SIM115  (closed with the process)
    operator = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "-m", "shoal.operator.handlers",
         "--standalone", "--namespace", kube.namespace],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        kube.create("inferencemodels", "InferenceModel", "kept", {"pool": POOL})
        status = wait_phase(kube, "kept", "Ready", CONVERGE_S)
        assert status["replicas"] == ["gpu-a-0"]
        assert status["replicaAddresses"] == [{
            "pod": "gpu-a-0",
            "http": f"{replica.bind_address}:{replica.http_port}",
            "grpc": f"{replica.bind_address}:{replica.grpc_port}",
            "version": "1",
        }]  # fmt: skip
        assert status["servedVersion"] == "1"

        os.kill(replica.pid, signal.SIGKILL)
        replica.stop()
        restarted = start_replica(repository, host=replica.host)  # same pod, same address
        started = time.monotonic()
        wait_for(lambda: not model_status(kube, "kept").get("replicas"), 10,
                 what="status.replicas emptied")  # fmt: skip
        noticed = time.monotonic() - started
        wait_for(lambda: model_status(kube, "kept").get("replicas") == ["gpu-a-0"]
                 and model_status(kube, "kept").get("phase") == "Ready", CONVERGE_S,
                 what="the model loaded again")  # fmt: skip
        back = time.monotonic() - started
        assert len(infer(restarted, "kept")) == EMBEDDING_DIMS
    finally:
        operator.send_signal(signal.SIGTERM)
        operator.wait(timeout=30)
    operator_log = (tmp_path / "operator.log").read_text(errors="replace")[-4000:]
    assert noticed < 2.0, operator_log
    print(f"status emptied {noticed:.1f} s after the restart, loaded again after {back:.1f} s")
