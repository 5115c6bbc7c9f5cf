"""Bad input at the router: each bad request is refused (or dropped) alone with a message that
says what was wrong, and the next good request is served."""

from __future__ import annotations

import json
import socket

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from shoal.router.settings import MIB
from shoal.router.static_source import StaticRoute
from tests.router.support import RouterThread, replica_of

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

GOOD = json.dumps(
    {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()
INFER = "/v2/models/alpha/infer"


@pytest.fixture(scope="module")
def router(triton_a):
    routes = [StaticRoute("alpha", (replica_of(triton_a),), max_hold_s=2)]
    with RouterThread(
        routes, probe_interval_s=0.5, max_body_bytes=MIB, max_grpc_message_bytes=MIB
    ) as running:
        yield running


def assert_still_serving(router) -> None:
    answer = requests.post(router.http_url + INFER, data=GOOD, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0]


# (what, method, path, body, headers, status, words in the message)
HTTP_CASES = [
    ("malformed JSON to /v1", "POST", "/v1/embeddings", b"{not json", {}, 400, "not valid JSON"),
    ("unknown model", "POST", "/v2/models/nope/infer", GOOD, {}, 404, "known models: alpha"),
    ("unknown model, /v1", "POST", "/v1/embeddings", b'{"model": "nope", "input": "a"}', {}, 404,
     "known models: alpha"),
    ("path characters", "POST", "/v2/models/..%2Fetc/infer", GOOD, {}, 400, "no path characters"),
    ("body over the limit", "POST", INFER, b"x" * (2 * MIB), {}, 413, "at most 1048576 bytes"),
    ("header length past the body", "POST", INFER, GOOD,
     {"Inference-Header-Content-Length": "99999"}, 400, "Inference-Header-Content-Length"),
    ("a timeout that is no number", "POST", INFER, GOOD, {"X-Shoal-Timeout": "soon"}, 400,
     "X-Shoal-Timeout"),
    ("an unknown path", "GET", "/v3/anything", b"", {}, 404, "is not served here"),
    ("a wrong method", "DELETE", INFER, b"", {}, 404, "not allowed"),
    ("HEAD on a proxied path", "HEAD", "/v2/models/alpha", b"", {}, 404, None),
    ("KServe-only model on /v1", "POST", "/v1/embeddings", b'{"model": "alpha", "input": "a"}',
     {}, 400, "has no shoal manifest"),
]  # fmt: skip


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_bad_http_input_is_refused_alone(router, case) -> None:
    _, method, path, body, headers, status, words = case
    answer = requests.request(
        method, router.http_url + path, data=body, headers=headers, timeout=30
    )
    assert answer.status_code == status, answer.text
    if method == "HEAD":  # no body to read
        assert_still_serving(router)
        return
    error = answer.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert words in message
    if path.startswith("/v1/"):
        assert set(error) == {"message", "type", "param", "code"}
    assert_still_serving(router)


def test_malformed_json_for_triton_gets_tritons_own_answer(router, triton_a) -> None:
    # The router does not parse KServe bodies: Triton's status and message come back unchanged.
    direct = requests.post(triton_a.http_url + INFER, data=b"{nope", timeout=30)
    answer = requests.post(router.http_url + INFER, data=b"{nope", timeout=30)
    assert (answer.status_code, answer.json()) == (direct.status_code, direct.json())
    assert "failed to parse the request JSON" in answer.json()["error"]
    assert_still_serving(router)


def test_a_body_shorter_than_its_content_length_is_refused_or_dropped(router) -> None:
    host, port = router.http_address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n".encode()
        connection.sendall(head + GOOD)
        connection.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    assert reply == b"" or reply.split(b" ")[1] == b"400", reply[:200]
    assert_still_serving(router)


def raw_call(router, method: str, request: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(router.grpc_address) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)
    return caught.value


def test_garbage_grpc_bytes_are_an_invalid_argument(router) -> None:
    error = raw_call(router, "ModelInfer", b"\xff\xff\xff\x01garbage")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid KServe v2 protobuf message" in error.details()
    assert_still_serving(router)


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("../alpha", grpc.StatusCode.INVALID_ARGUMENT, "no path characters"),
        ("nope", grpc.StatusCode.NOT_FOUND, "known models: alpha"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "names no model"),
    ],
)
def test_bad_grpc_model_names_are_refused(router, name: str, code, words: str) -> None:
    request = service_pb2.ModelInferRequest(model_name=name).SerializeToString()
    error = raw_call(router, "ModelInfer", request)
    assert error.code() is code and words in error.details()


def test_a_grpc_message_over_the_limit_is_refused(router) -> None:
    client = grpcclient.InferenceServerClient(router.grpc_address)
    x = grpcclient.InferInput("X", [1, MIB], "FP32")
    x.set_data_from_numpy(np.zeros((1, MIB), np.float32))
    with pytest.raises(Exception) as caught:
        client.infer("alpha", [x])
    assert "RESOURCE_EXHAUSTED" in str(caught.value)
    assert_still_serving(router)


def test_a_client_expecting_100_continue_is_answered(router) -> None:
    # curl sends `Expect: 100-continue` for bodies over 1 MiB; the router answers it itself.
    answer = requests.post(
        router.http_url + INFER, data=GOOD, headers={"Expect": "100-continue"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0]
