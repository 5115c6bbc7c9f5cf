"""`shoal router run` as a user starts it: two worker processes on the same ports (SO_REUSEPORT)
in front of a real Triton; bad flags get a one-line error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from shoal.runtime.triton import free_port
from tests.router.support import wait_for

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]


SHOAL = str(Path(sys.executable).parent / "shoal")  # the console script


def shoal(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [SHOAL, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )  # fmt: skip


def test_two_workers_share_the_ports_and_serve_http_and_grpc(triton_a) -> None:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    route = f"alpha=http://127.0.0.1:{triton_a.http_port},grpc=127.0.0.1:{triton_a.grpc_port}"
    process = shoal(
        "router", "run", "--route", route, "--host", "127.0.0.1", "--http-port", str(http_port),
        "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--workers", "2",
    )  # fmt: skip
    try:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")

        def ready() -> bool:
            try:
                return http.is_model_ready("alpha")
            except Exception:
                return False

        wait_for(ready, 60, "the router to serve alpha")
        x = httpclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        for _ in range(10):
            assert httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").infer(
                "alpha", [x]
            ).as_numpy("Y").tolist() == [[2.0, 2.0]]
        rpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        g = grpcclient.InferInput("X", [1, 2], "FP32")
        g.set_data_from_numpy(np.ones((1, 2), np.float32))
        assert rpc.infer("alpha", [g]).as_numpy("Y").tolist() == [[2.0, 2.0]]
        served = 0.0
        for port in (metrics_port, metrics_port + 1):  # one metrics port per worker
            text = wait_for(lambda p=port: _metrics(p), 30, f"metrics on {port}")
            served += sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("shoal_router_upstream_seconds_count")
            )
        assert served == 11
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output, _ = process.communicate(timeout=30)
    assert time.monotonic() - started < 10, output
    assert process.returncode == 0, output


def _metrics(port: int) -> str | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--route", "alpha"], "is not MODEL=http://HOST:PORT"),
        (["--route", "alpha=ftp://x:1"], "is not http://HOST:PORT"),
        ([], "no routes"),
        (["--route", "alpha=http://127.0.0.1:1", "--workers", "0"], "--workers must be"),
        (["--route", "alpha=http://127.0.0.1:1", "--max-held-per-model", "0"], "at least 1"),
    ],
)
def test_bad_flags_get_one_line_errors(args: list[str], words: str) -> None:
    process = shoal("router", "run", *args)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert words in output and "Traceback" not in output


def test_a_taken_port_is_one_line_naming_it_its_holder_and_the_option() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = shoal(
            "router", "run", "--route", "alpha=http://127.0.0.1:1", "--host", "127.0.0.1",
            "--http-port", "0", "--grpc-port", str(port), "--metrics-port", "-1",
        )  # fmt: skip
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    (line,) = output.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"shoal router: error: gRPC port {port} is already in use by pid ")
    assert f"pid {os.getpid()} (" in line  # this test process holds it
    assert line.endswith("another port with --grpc-port PORT (0: any free port)"), line
