"""TritonServer: a real tritonserver process starts on free loopback ports, serves a python-backend
model, and stops without leaving stub processes or shared-memory segments behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from shoal.runtime.triton import (
    CUDA_UNAVAILABLE,
    NVIDIA_DRIVER_DEVICE,
    TritonServer,
    TritonStartError,
)
from tests.support.triton import write_doubler

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]


def process_alive(pid: int) -> bool:
    """Running (not a zombie: an orphan's exit status is reaped by init, not by us)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_server_serves_a_python_model_and_stops_without_orphans(triton_server, tmp_path):
    write_doubler(tmp_path)
    server = triton_server(tmp_path, load_models=["doubler"])
    client = httpclient.InferenceServerClient(server.http_address)
    assert client.is_model_ready("doubler")
    x = httpclient.InferInput("X", [1, 3], "FP32")
    x.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
    result = client.infer("doubler", [x]).as_numpy("Y")
    np.testing.assert_array_equal(result, [[2, 4, 6]])
    assert httpx.get(server.metrics_url).status_code == 200
    assert len(server.stub_pids()) == 1
    assert server.shm_segments(), "the stub's shared memory should carry this server's prefix"
    client.close()  # Triton waits (up to its exit timeout) for open HTTP connections

    pgid = server.pid
    assert server.stop() == 0
    assert server.stub_pids() == []
    assert server.shm_segments() == []
    assert not group_alive(pgid)
    assert server.stop() == 0  # idempotent


def test_a_temporary_log_outlives_restarts_and_is_removed_at_stop_a_named_one_stays(
    triton_server, tmp_path
):
    write_doubler(tmp_path)
    server = triton_server(tmp_path, load_models=["doubler"], log_path=None)
    temporary = server.log_path
    assert temporary is not None and temporary.is_file()
    server.restart()
    assert server.log_path == temporary and "successfully loaded 'doubler'" in server.log_text()
    server.stop()
    assert not temporary.exists()
    named = tmp_path / "kept.log"
    server = triton_server(tmp_path, load_models=["doubler"], log_path=named)
    server.stop()
    assert "successfully loaded 'doubler'" in named.read_text()


def test_a_server_that_ignores_sigterm_is_killed_with_its_stubs(triton_server, tmp_path):
    write_doubler(tmp_path)
    server = triton_server(tmp_path, load_models=["doubler"])
    stubs = server.stub_pids()
    assert stubs
    # Freeze the server so SIGTERM cannot be handled: stop() must still kill everything.
    os.kill(server.pid, signal.SIGSTOP)
    server.stop(timeout_s=1)
    assert server.stub_pids() == []
    assert server.shm_segments() == []
    # A SIGKILLed stub drops its argv (so stub_pids() no longer sees it) a moment before it dies.
    deadline = time.monotonic() + 5
    while any(process_alive(pid) for pid in stubs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in stubs:
        assert not process_alive(pid)


def test_a_missing_model_fails_startup_with_the_log_tail(triton_server, tmp_path):
    with pytest.raises(TritonStartError) as failure:
        triton_server(tmp_path, load_models=["no_such_model"], startup_timeout_s=60)
    assert "no_such_model" in str(failure.value)
    assert "tritonserver log" in str(failure.value)


@pytest.mark.skipif(
    NVIDIA_DRIVER_DEVICE.exists(), reason="a GPU host: there CUDA lines may be the problem"
)
def test_on_a_cpu_host_the_log_tail_leaves_out_that_cuda_is_missing(triton_server, tmp_path):
    log = tmp_path / "triton.log"
    (tmp_path / "repository").mkdir()
    with pytest.raises(TritonStartError) as failure:
        triton_server(tmp_path / "repository", load_models=["no_such_model"], log_path=log)
    assert CUDA_UNAVAILABLE.search(log.read_text()), "Triton printed no CUDA lines to leave out"
    assert "no_such_model" in str(failure.value)
    assert not CUDA_UNAVAILABLE.search(str(failure.value)), str(failure.value)


def test_a_repository_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(TritonStartError, match="not a directory"):
        TritonServer(tmp_path / "missing").start()


def test_sigterm_to_the_owner_process_stops_the_server_cleanly(tmp_path):
    """A process that owns a server (as `shoal serve` does) and gets SIGTERM leaves nothing."""
    write_doubler(tmp_path)
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        from shoal.runtime.triton import TritonServer
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server = TritonServer({str(tmp_path)!r}, load_models=["doubler"]).start()
        print(server.shm_prefix, server.pid, flush=True)
        try:
            time.sleep(120)
        finally:
            server.stop()
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        prefix, pid = owner.stdout.readline().split()
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=30) == 0
    finally:
        if owner.poll() is None:
            owner.kill()
    from shoal.runtime.triton import stub_pids_with_prefix

    deadline = time.monotonic() + 5
    while stub_pids_with_prefix(prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stub_pids_with_prefix(prefix) == []
    assert list(Path("/dev/shm").glob(f"{prefix}*")) == []
    assert not process_alive(int(pid))


def test_a_server_in_a_network_namespace_serves_on_its_address_and_stops_without_orphans(
    netns_host, triton_server, tmp_path
):
    """Like a pod: its own namespace, its own address, the standard ports; reached over the veth;
    stop() still finds the stubs and the shared memory (same pid namespace, same /dev/shm)."""
    write_doubler(tmp_path)
    host = netns_host()
    server = triton_server(
        tmp_path,
        load_models=["doubler"],
        network_namespace=host.name,
        bind_address=host.address,
    )
    assert (server.http_port, server.grpc_port, server.metrics_port) == (8000, 8001, 8002)
    assert server.http_url == f"http://{host.address}:8000"
    assert Path(f"/proc/{server.pid}/exe").resolve().name == "tritonserver"  # `ip` exec'd it
    body = {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1, 4]}]}
    with httpx.Client(trust_env=False) as client:
        response = client.post(f"{server.http_url}/v2/models/doubler/infer", json=body)
        assert response.json()["outputs"][0]["data"] == [2, 8]
        assert client.get(server.metrics_url).status_code == 200
    identify = subprocess.run(
        ["ip", "netns", "identify", str(server.pid)], capture_output=True, text=True, check=True
    )
    assert identify.stdout.strip() == host.name
    assert len(server.stub_pids()) == 1
    assert server.shm_segments()
    pgid = server.pid
    assert server.stop() == 0
    assert server.stub_pids() == []
    assert server.shm_segments() == []
    assert not group_alive(pgid)


def test_a_server_in_a_missing_network_namespace_fails_naming_it(triton_server, tmp_path):
    with pytest.raises(TritonStartError, match="shoal-no-such-namespace"):
        triton_server(
            tmp_path, network_namespace="shoal-no-such-namespace", bind_address="198.18.0.2"
        )


def test_a_wildcard_bind_address_is_refused():
    with pytest.raises(ValueError, match="wildcard"):
        TritonServer("/tmp", bind_address="0.0.0.0")
