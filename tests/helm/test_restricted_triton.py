"""A pool's Triton with the restricted repository API the operator gives it
(shoal.operator.resources.restricted_api_args), against a real Triton: a load, unload or index
without the header is refused over HTTP and gRPC; the operator's own client (TritonControl, which
takes the key from the operator's environment as the chart sets it) loads; inference stays open.
The router drops a client's copy of the header: tests/router/test_kserve_proxy.py."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.fleet.triton_control import PermanentTritonError, TritonControl
from shoal.operator.resources import ADMIN_KEY_VAR, TritonAdmin, restricted_api_args
from tests.support.triton import triton_server, write_doubler  # noqa: F401  (fixture)

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]

HEADER, KEY = "shoal-admin-key", "k3y-from-the-secret"


@pytest.fixture
def restricted_triton(triton_server, tmp_path):  # noqa: F811
    repository = tmp_path / "repository"
    write_doubler(repository, "doubler")
    # What Kubernetes does with `$(SHOAL_TRITON_ADMIN_KEY)` in the pod's args.
    args = [
        arg.replace(f"$({ADMIN_KEY_VAR})", KEY)
        for arg in restricted_api_args(TritonAdmin(header=HEADER, secret="unused"))
    ]
    return triton_server(repository, extra_args=args)


def _infer(server) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        x = httpclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), dtype=np.float32))
        return client.infer("doubler", [x]).as_numpy("Y")
    finally:
        client.close()


async def test_repository_calls_without_the_key_are_refused_and_the_operators_succeed(
    restricted_triton, monkeypatch
):
    http = httpclient.InferenceServerClient(restricted_triton.http_address)
    grpc = grpcclient.InferenceServerClient(restricted_triton.grpc_address)
    try:
        for call in (
            lambda: http.load_model("doubler"),
            lambda: http.get_model_repository_index(),
            lambda: grpc.load_model("doubler"),
            lambda: grpc.get_model_repository_index(),
            lambda: http.load_model("doubler", headers={HEADER: "a guess"}),
            lambda: grpc.load_model("doubler", headers={HEADER: "a guess"}),
        ):
            with pytest.raises(InferenceServerException, match="restricted|not allowed|denied"):
                call()
        assert not http.is_model_ready("doubler")

        # The operator's client, configured the way the chart configures the operator.
        monkeypatch.setenv("SHOAL_TRITON_ADMIN_HEADER", HEADER)
        monkeypatch.setenv("SHOAL_TRITON_ADMIN_KEY", KEY)
        async with TritonControl(restricted_triton.http_url) as control:
            await control.load("doubler")
            assert await control.is_model_ready("doubler")
            assert [e.name for e in await control.index(ready_only=True)] == ["doubler"]
        # Inference is not restricted: clients reach it (through the router) without a key.
        assert _infer(restricted_triton).tolist() == [[2.0, 2.0]]

        with pytest.raises(InferenceServerException):
            grpc.unload_model("doubler")
        async with TritonControl(restricted_triton.http_url, admin_header={HEADER: "old"}) as stale:
            with pytest.raises(PermanentTritonError, match="restricted|not allowed|denied"):
                await stale.unload("doubler")
        assert http.is_model_ready("doubler")
        # Over gRPC Triton expects the header under a prefix (Triton 2.51's own message says so).
        grpc.unload_model("doubler", headers={f"triton-grpc-protocol-{HEADER}": KEY})
    finally:
        http.close()
        grpc.close()
