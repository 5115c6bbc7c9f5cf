"""Plain tritonclient (HTTP and gRPC, sync and aio) against the router gives what it gets from
Triton directly: health, metadata, config, readiness, statistics, infer with JSON and binary
tensors (over 4 MiB too), and gRPC streaming. Triton's repository API is not reachable."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from shoal.router.static_source import StaticRoute
from tests.router.support import RouterThread, replica_of

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

BIG = 1_500_000  # floats per row: a 6 MB tensor, over gRPC's and aiohttp's 4 MiB defaults


@pytest.fixture(scope="module")
def router(triton_a, triton_b):
    routes = [
        StaticRoute("alpha", (replica_of(triton_a),)),
        StaticRoute("beta", (replica_of(triton_b),)),
    ]
    with RouterThread(routes, probe_interval_s=0.5) as running:
        yield running


def tensor(module, values: np.ndarray, binary: bool = True):
    x = module.InferInput("X", list(values.shape), "FP32")
    if module is httpclient or module is httpaio:
        x.set_data_from_numpy(values, binary_data=binary)
    else:
        x.set_data_from_numpy(values)
    return x


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_through_the_router_equals_direct(router, triton_a, binary: bool) -> None:
    values = np.random.default_rng(0).random((3, 5), dtype=np.float32)
    output = httpclient.InferRequestedOutput("Y", binary_data=binary)
    results = []
    for address in (router.http_address, triton_a.http_address):
        client = httpclient.InferenceServerClient(address)
        answer = client.infer("alpha", [tensor(httpclient, values, binary)], outputs=[output])
        results.append(answer.as_numpy("Y"))
        client.close()
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], values * 2)


def test_grpc_infer_through_the_router_equals_direct(router, triton_a) -> None:
    values = np.random.default_rng(1).random((2, 7), dtype=np.float32)
    results = []
    for address in (router.grpc_address, triton_a.grpc_address):
        client = grpcclient.InferenceServerClient(address)
        results.append(client.infer("alpha", [tensor(grpcclient, values)]).as_numpy("Y"))
        client.close()
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], values * 2)


async def test_aio_clients_through_the_router_equal_direct(router, triton_a) -> None:
    values = np.random.default_rng(2).random((4, 3), dtype=np.float32)
    http = httpaio.InferenceServerClient(router.http_address)
    rpc = grpcaio.InferenceServerClient(router.grpc_address)
    try:
        answers = await asyncio.gather(
            *[http.infer("alpha", [tensor(httpaio, values)]) for _ in range(10)],
            *[rpc.infer("alpha", [tensor(grpcaio, values)]) for _ in range(10)],
        )
    finally:
        await http.close()
        await rpc.close()
    for answer in answers:
        np.testing.assert_array_equal(answer.as_numpy("Y"), values * 2)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tensors_over_4_mib_pass(router, protocol: str) -> None:
    values = np.random.default_rng(3).random((1, BIG), dtype=np.float32)
    if protocol == "http":
        client = httpclient.InferenceServerClient(router.http_address, network_timeout=120)
        answer = client.infer("alpha", [tensor(httpclient, values)])
    else:
        client = grpcclient.InferenceServerClient(router.grpc_address)
        answer = client.infer("alpha", [tensor(grpcclient, values)])
    np.testing.assert_array_equal(answer.as_numpy("Y"), values * 2)
    client.close()


def test_http_metadata_config_ready_and_statistics_match_direct(router, triton_a) -> None:
    via = httpclient.InferenceServerClient(router.http_address)
    direct = httpclient.InferenceServerClient(triton_a.http_address)
    assert via.is_server_live() and via.is_server_ready()
    assert via.get_server_metadata()["name"] == "shoal-router"
    assert via.get_model_metadata("alpha") == direct.get_model_metadata("alpha")
    assert via.get_model_config("alpha") == direct.get_model_config("alpha")
    assert via.get_model_metadata("alpha", "1") == direct.get_model_metadata("alpha", "1")
    assert via.is_model_ready("alpha") and via.is_model_ready("beta")
    stats = via.get_inference_statistics("alpha")["model_stats"]
    assert [s["name"] for s in stats] == ["alpha"]
    everything = via.get_inference_statistics()["model_stats"]
    assert sorted(s["name"] for s in everything) == ["alpha", "beta"]


def test_grpc_metadata_config_ready_and_statistics_match_direct(router, triton_a) -> None:
    via = grpcclient.InferenceServerClient(router.grpc_address)
    direct = grpcclient.InferenceServerClient(triton_a.grpc_address)
    assert via.is_server_live() and via.is_server_ready()
    assert via.get_server_metadata().name == "shoal-router"
    assert via.get_model_metadata("alpha") == direct.get_model_metadata("alpha")
    assert via.get_model_config("alpha") == direct.get_model_config("alpha")
    assert via.is_model_ready("alpha")
    names = [s.name for s in via.get_inference_statistics("alpha").model_stats]
    assert names == ["alpha"]
    names = sorted(s.name for s in via.get_inference_statistics().model_stats)
    assert names == ["alpha", "beta"]


def test_grpc_stream_infer_through_the_router(router) -> None:
    client = grpcclient.InferenceServerClient(router.grpc_address)
    answers: list = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    for index, model in enumerate(["alpha", "beta", "alpha", "beta"]):
        client.async_stream_infer(
            model, [tensor(grpcclient, values + index)], request_id=str(index)
        )
    client.stop_stream()
    client.close()
    assert len(answers) == 4
    for result, error in answers:
        assert error is None, error
        index = int(result.get_response().id)
        np.testing.assert_array_equal(result.as_numpy("Y"), (values + index) * 2)


def test_the_repository_api_is_not_reachable(router) -> None:
    http = httpclient.InferenceServerClient(router.http_address)
    for call in (http.get_model_repository_index, lambda: http.load_model("alpha"),
                 lambda: http.unload_model("alpha")):  # fmt: skip
        with pytest.raises(InferenceServerException, match="not served through the router"):
            call()
    rpc = grpcclient.InferenceServerClient(router.grpc_address)
    for call in (rpc.get_model_repository_index, lambda: rpc.unload_model("alpha")):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "not served through the router" in caught.value.message()
    assert http.is_model_ready("alpha")  # nothing was unloaded


@pytest.fixture(scope="module")
def restricted_triton(doubler_repository, tmp_path_factory):
    from tests.router.conftest import _session_triton

    yield from _session_triton(
        doubler_repository, ["alpha"], tmp_path_factory,
        extra_args=["--http-restricted-api=model-config:shoal-admin-key=secret",
                    "--grpc-restricted-protocol=model-config:shoal-admin-key=secret"],
    )  # fmt: skip


def test_a_clients_restricted_api_header_is_dropped(restricted_triton) -> None:
    headers = {"shoal-admin-key": "secret"}
    direct = httpclient.InferenceServerClient(restricted_triton.http_address)
    assert direct.get_model_config("alpha", headers=headers)["name"] == "alpha"
    routes = [StaticRoute("alpha", (replica_of(restricted_triton),))]
    with RouterThread(routes, probe_interval_s=0.5) as running:
        via = httpclient.InferenceServerClient(running.http_address)
        with pytest.raises(InferenceServerException, match="restricted"):
            via.get_model_config("alpha", headers=headers)
        rpc = grpcclient.InferenceServerClient(running.grpc_address)
        with pytest.raises(InferenceServerException, match="restricted"):
            rpc.get_model_config("alpha", headers=headers)
        # Over gRPC, Triton reads the header under its protocol prefix: that spelling passes
        # straight to Triton and is dropped by the router.
        grpc_headers = {"triton-grpc-protocol-shoal-admin-key": "secret"}
        direct_rpc = grpcclient.InferenceServerClient(restricted_triton.grpc_address)
        assert direct_rpc.get_model_config("alpha", headers=grpc_headers).config.name == "alpha"
        with pytest.raises(InferenceServerException, match="restricted"):
            rpc.get_model_config("alpha", headers=grpc_headers)


def test_unknown_grpc_methods_are_unimplemented(router) -> None:
    with grpc.insecure_channel(router.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/Nope")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"")
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
