"""Faults under `shoal serve`, with a real Triton: the server SIGKILLed (restarted on the same
ports, its models loaded again), killed over and over (serving ends with its log's tail), a load
that hangs (one model times out, the others load and serve), and Ctrl-C during a load."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from shoal.fleet.driver import default_load_deadline
from shoal.fleet.errors import LoadTimedOut
from shoal.runtime.serve import CRASH_LIMIT, LocalServing, TritonCrashLoop
from tests.runtime.entries import export_tiny_embedders
from tests.support.triton import SERVE_ON_FREE_PORTS

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

NAMES = ["sa", "sb"]
HANG_INITIALIZE = """

def _hang(self, args):
    import time

    time.sleep(3600)


TritonPythonModel.initialize = _hang
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("supervision") / "repository"
    export_tiny_embedders(tiny_model("bert"), path, NAMES)
    return path


def embed(address: str, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(address)
    try:
        tensor = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"a shoal of fish"]], dtype=object))
        return client.infer(model, [tensor]).as_numpy("EMBEDDING")
    finally:
        client.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


async def _until(condition, timeout_s: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        if loop.time() - started > timeout_s:
            raise AssertionError(f"{what} not within {timeout_s} s")
        await asyncio.sleep(0.05)
    return loop.time() - started


async def test_a_killed_triton_is_restarted_on_its_ports_with_its_models(repository):
    async with LocalServing(repository) as serving:
        await serving.controller.start(["sa"])
        address = serving.server.http_address
        before = await asyncio.to_thread(embed, address, "sa")
        stop = asyncio.Event()
        supervisor = asyncio.create_task(serving.run_until(stop, interval_s=0.2))
        pid = serving.server.pid
        os.kill(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:  # the client's view: the same address answers again, with the same vector
            try:
                after = await asyncio.to_thread(embed, address, "sa")
                break
            except Exception:
                assert loop.time() - started < 60, "sa not served again within 60 s"
                await asyncio.sleep(0.1)
        took = loop.time() - started
        assert serving.server.pid != pid
        np.testing.assert_allclose(after, before, atol=1e-6)
        assert not serving.controller.entries["sb"].loaded  # only what it had
        stop.set()
        await supervisor
    print(f"restarted and reloaded in {took:.1f} s")


async def test_a_triton_that_keeps_dying_ends_serving_with_its_log(repository):
    async with LocalServing(repository) as serving:
        stop = asyncio.Event()
        supervisor = asyncio.create_task(serving.run_until(stop, interval_s=0.1))
        for _ in range(CRASH_LIMIT):
            pid = serving.server.pid
            os.kill(pid, signal.SIGKILL)
            # The next kill goes to the restarted server once it answers (or serving ended).
            await _until(
                lambda pid=pid: (
                    supervisor.done()
                    or (serving.server.pid != pid and _answers(serving.server.http_url))
                ),
                60,
                "a restart",
            )
        with pytest.raises(
            TritonCrashLoop, match=r"(?s)died 3 times within 60 s.*tritonserver log"
        ):
            await asyncio.wait_for(supervisor, 30)


async def test_a_hanging_load_times_out_and_the_other_models_load_and_serve(repository, tmp_path):
    hanging = tmp_path / "repository"
    shutil.copytree(repository, hanging)
    model_py = hanging / "sb__tokenize" / "1" / "model.py"
    # A python step whose initialize never ends (a stuck download, a deadlock).
    model_py.write_text(model_py.read_text() + HANG_INITIALIZE)
    async with LocalServing(hanging) as serving:
        controller = serving.controller
        controller.driver.load_deadline = lambda memory: 3.0
        controller.driver._entry_check = None  # the edited step would fail its hash check
        started = time.monotonic()
        with pytest.raises(LoadTimedOut, match="'sb'.*load deadline"):
            await controller.ensure_loaded("sb")
        assert time.monotonic() - started < 10
        controller.driver.load_deadline = default_load_deadline
        await asyncio.wait_for(controller.ensure_loaded("sa"), 60)  # not blocked behind sb
        await asyncio.to_thread(embed, serving.server.http_address, "sa")


def test_ctrl_c_stops_shoal_serve_within_seconds_even_during_a_load(repository, tmp_path):
    serve = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", "serve", str(repository), "--log-file",
         str(tmp_path / "triton.log"), *SERVE_ON_FREE_PORTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        log = tmp_path / "triton.log"
        deadline = time.monotonic() + 60
        # Wait until Triton is loading the first entry (a python stub is starting), then Ctrl-C.
        while time.monotonic() < deadline and "sa" not in (
            log.read_text(errors="replace") if log.exists() else ""
        ):
            time.sleep(0.05)
        serve.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = serve.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        if serve.poll() is None:
            serve.kill()
    output = serve.stdout.read()
    assert "Traceback" not in output, output
    assert code == 0, output
    assert took < 10, f"stopping took {took:.1f} s"
