"""Pure parts: replica choice, the error table, the gRPC field reader, OpenAI request parsing."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.grpc import service_pb2

from shoal.fleet.replica import Replica
from shoal.router.balancing import choose_replica
from shoal.router.errors import ERROR_TABLE, ErrorKind, RouterError
from shoal.router.grpc_wire import read_model_fields
from shoal.router.openai_api import parse_embeddings, parse_rerank

A, B, C = (Replica(n, "127.0.0.1", i) for i, n in enumerate("abc", 1))


def test_the_replica_with_fewest_requests_in_flight_wins() -> None:
    assert choose_replica([A, B, C], {"a": 3, "b": 1, "c": 2}) is B


def test_ties_rotate_so_equal_replicas_share_the_load() -> None:
    chosen = {choose_replica([A, B, C], {}, turn=turn).name for turn in range(3)}
    assert chosen == {"a", "b", "c"}


def test_excluded_replicas_are_skipped_and_none_is_left_when_all_are() -> None:
    assert choose_replica([A, B], {"b": 9}, excluded={"a"}) is B
    assert choose_replica([A, B], {}, excluded={"a", "b"}) is None
    assert choose_replica([], {}) is None


def test_every_error_kind_has_one_row_and_only_503s_say_retry_after() -> None:
    assert set(ERROR_TABLE) == set(ErrorKind)
    for kind, row in ERROR_TABLE.items():
        assert row.retry_after == (row.http_status == 503), kind
        assert (row.http_status >= 500) == (row.openai_type == "server_error"), kind
    # A model that can never load must not invite blind retries.
    assert ERROR_TABLE[ErrorKind.MODEL_CANNOT_LOAD].http_status == 500
    assert ERROR_TABLE[ErrorKind.MODEL_CANNOT_LOAD].grpc_code is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "message",
    [
        service_pb2.ModelInferRequest(model_name="minilm", model_version="2", id="x"),
        service_pb2.ModelMetadataRequest(name="minilm", version="2"),
        service_pb2.ModelConfigRequest(name="minilm", version="2"),
        service_pb2.ModelReadyRequest(name="minilm", version="2"),
        service_pb2.ModelStatisticsRequest(name="minilm", version="2"),
    ],
)
def test_the_model_name_and_version_are_read_from_every_model_request(message) -> None:
    assert read_model_fields(message.SerializeToString()) == ("minilm", "2")


def test_the_reader_skips_tensors_without_parsing_them() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    tensor.parameters["p"].int64_param = 7
    request.raw_input_contents.append(b"\x00" * 4_000_000)
    request.parameters["timeout"].int64_param = 5
    assert read_model_fields(request.SerializeToString()) == ("m", "")


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff", b"\x0a\x10abc", b"\x00", b"\x0b", b"\x0a\x02\xff\xfe", b"", b"\x1a\x01x"],
)
def test_garbage_bytes_are_an_invalid_request(garbage: bytes) -> None:
    with pytest.raises(RouterError) as caught:
        read_model_fields(garbage)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST


def test_embeddings_requests_are_checked_field_by_field() -> None:
    parsed = parse_embeddings({"model": "m", "input": "a", "encoding_format": "base64"})
    assert parsed.texts == ["a"] and parsed.encoding_format == "base64"
    assert parsed.adapter is None
    assert (
        parse_embeddings({"model": "m", "input": "a", "adapter": "legal-v2"}).adapter == "legal-v2"
    )
    for payload, param in [
        ({"input": "a"}, "model"),
        ({"model": "m", "input": [1, 2]}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "a", "input_type": "passage"}, "input_type"),
        ({"model": "m", "input": "a", "adapter": ""}, "adapter"),
        ({"model": "m", "input": "a", "adapter": 3}, "adapter"),
        ({"model": "m", "input": "a", "adapter": "../x"}, "adapter"),
    ]:
        with pytest.raises(RouterError) as caught:
            parse_embeddings(payload)
        assert caught.value.param == param, payload


def test_rerank_accepts_cohere_jina_and_tei_shapes() -> None:
    cohere = parse_rerank(
        {"model": "r", "query": "q", "documents": [{"text": "x"}, "y"], "top_n": 1,
         "return_documents": True}
    )  # fmt: skip
    assert cohere.documents == ["x", "y"] and cohere.top_n == 1 and cohere.return_documents
    tei = parse_rerank({"model": "r", "query": "q", "texts": ["x"], "return_text": True})
    assert tei.documents == ["x"] and tei.return_documents
    with pytest.raises(RouterError):
        parse_rerank({"model": "r", "query": "q", "documents": "x"})
    with pytest.raises(RouterError):
        parse_rerank({"model": "r", "query": 3, "documents": ["x"]})


def test_every_method_of_the_grpc_service_is_served_or_refused_by_name() -> None:
    from shoal.router.core import Router
    from shoal.router.grpc_server import SERVICE, GrpcFrontDoor
    from shoal.router.settings import RouterSettings
    from shoal.router.static_source import StaticPlacement

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    settings = RouterSettings(metrics_port=None)
    door = GrpcFrontDoor(Router(StaticPlacement([], probe_interval_s=None), settings), settings)
    assert set(door._handlers) == {SERVICE + method.name for method in service.methods}
