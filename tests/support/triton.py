"""Real Triton servers for tests: a factory fixture that starts `tritonserver` on free loopback
ports and stops every server it started (no orphan stubs, no leftover shared memory) at teardown.

Use it from a test module or conftest:

    from tests.support.triton import triton_server  # noqa: F401  (a fixture)

    def test_something(triton_server, tmp_path):
        server = triton_server(repository, load_models=["m"])
        client = tritonclient.http.InferenceServerClient(server.http_address)

Tests that use it are skipped (not failed) when the `serve` extra is not installed: the check
runs inside the fixture, so collecting pure-logic tests never needs Triton.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.runtime.installation import TritonNotInstalled, locate_triton
from shoal.runtime.triton import TritonServer

TritonServerFactory = Callable[..., TritonServer]

# `shoal serve` arguments for any free ports: by default it takes Triton's standard 8000-8002,
# and tests run beside other servers.
SERVE_ON_FREE_PORTS = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")

DOUBLER_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

DOUBLER_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = pb_utils.Tensor("Y", (x * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([y]))
        return responses
"""


def write_doubler(repository: Path, name: str = "doubler") -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(DOUBLER_CONFIG.format(name=name))
    (repository / name / "1" / "model.py").write_text(DOUBLER_MODEL)


def start_triton(repository: Path | str, **kwargs: Any) -> TritonServer:
    """Start a server (outside pytest fixtures); the caller stops it."""
    return TritonServer(repository, **kwargs).start()


@contextlib.contextmanager
def serving_entries(
    repository: Path, names: Iterable[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """A server loading every Triton model of the named shoal entries (for module fixtures)."""
    from shoal.model_repository.layout import EntryLayout

    try:
        installation = locate_triton()
    except TritonNotInstalled as exc:
        pytest.fail(f"Triton is not available: {exc}; run `bash scripts/setup-env.sh dev`")
    models = [m for name in names for m in EntryLayout(repository, name).triton_models]
    log_path = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    with TritonServer(
        repository, load_models=models, installation=installation, log_path=log_path
    ) as running:
        yield running


@pytest.fixture
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServerFactory]:
    """Factory: `triton_server(repository, load_models=[...], **TritonServer kwargs)`."""
    try:
        installation = locate_triton()
    except TritonNotInstalled as exc:
        # The suite's set-up installs Triton (nvidia-pytriton): its absence is a failure, not a skip.
        pytest.fail(f"Triton is not available: {exc}; run `bash scripts/setup-env.sh dev`")
    started: list[TritonServer] = []

    def factory(repository: Path | str, **kwargs: Any) -> TritonServer:
        kwargs.setdefault("installation", installation)
        kwargs.setdefault("log_path", tmp_path_factory.mktemp("triton-log") / "tritonserver.log")
        server = TritonServer(repository, **kwargs)
        started.append(server)
        return server.start()

    yield factory
    for server in reversed(started):
        server.stop()
