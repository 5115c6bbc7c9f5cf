"""A replica that placement still lists as ready but that refuses connections (dead, never
noticed by the source): requests fail with a message naming what happened, statistics too, and
nothing but that request is affected. Fake-free: the "replica" is a closed loopback port."""

from __future__ import annotations

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2

from shoal.fleet.replica import Replica
from shoal.router.static_source import StaticRoute
from shoal.runtime.triton import free_port
from tests.router.support import RouterThread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def router():
    dead = Replica("dead", "127.0.0.1", free_port(), grpc_port=free_port())
    with RouterThread([StaticRoute("alpha", (dead,), max_hold_s=0.5)]) as running:
        running.in_loop(running.source.set_ready, "alpha", [dead])
        yield running


def test_infer_on_a_dead_replica_ends_in_503_naming_the_cause(router) -> None:
    answer = requests.post(router.http_url + "/v2/models/alpha/infer", data=b"{}", timeout=30)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert "could not be reached" in answer.json()["error"]
    assert router.metric("shoal_router_retries_total", model="alpha", reason="unreachable") >= 1


def test_statistics_from_a_dead_replica_say_so(router) -> None:
    answer = requests.get(router.http_url + "/v2/models/alpha/stats", timeout=30)
    assert answer.status_code == 503 and "the replica failed" in answer.json()["error"]
    with grpc.insecure_channel(router.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")
        with pytest.raises(grpc.RpcError) as caught:
            call(service_pb2.ModelStatisticsRequest(name="alpha").SerializeToString(), timeout=30)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "the replica failed" in caught.value.details()
