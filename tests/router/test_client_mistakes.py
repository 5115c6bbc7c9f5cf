"""A client's mistake in a request to a shoal entry (text that is not UTF-8, over the byte limit,
a bad TEXT_TYPE, more rows than the batch size, ...) is answered as the protocol expects: HTTP 400
and gRPC INVALID_ARGUMENT, with a message naming the input and the limit, straight from Triton
and unchanged through the router, which does not send it again to another replica (a client's
mistake is not a replica's fault). Server faults stay 500 / INTERNAL. After each refusal the
entry keeps serving good requests.

Real tiny exports (a BERT embedder and a cross-encoder reranker, portable runtime) on one real
Triton; the router lists that Triton twice, under two replica names, so that a retry would show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.contract import INPUT_QUERY, INPUT_TEXT, INPUT_TEXT_TYPE, OUTPUT_EMBEDDING, OUTPUT_SCORE
from shoal.runtime import client as shoal_client
from tests.router.support import router_over_repository, serve_entries
from tests.runtime.entries import CLIENT_MAX_BATCH_SIZE, CLIENT_MAX_TEXT_BYTES

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

MAX_TEXT_BYTES = CLIENT_MAX_TEXT_BYTES
MAX_BATCH_SIZE = CLIENT_MAX_BATCH_SIZE
MODELS = ("embedder", "reranker")
# How each protocol says "the client's mistake", and "the server's fault".
CLIENT_MISTAKE = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
SERVER_FAULT = {"http": "500", "grpc": "StatusCode.INTERNAL"}
MODULES = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def repository(client_entries) -> Path:
    return client_entries


@pytest.fixture(scope="module")
def triton(repository, tmp_path_factory):
    yield from serve_entries(repository, MODELS, tmp_path_factory)


@pytest.fixture(scope="module")
def router(triton, repository):
    # The same Triton twice: a retry on "another replica" would reach it a second time.
    with router_over_repository(
        repository, [triton, triton], ["replica-a", "replica-b"]
    ) as running:
        yield running


@dataclass(frozen=True)
class Endpoint:
    protocol: str
    address: str

    def client(self):
        return MODULES[self.protocol].InferenceServerClient(self.address)


def endpoints(triton, router) -> list[tuple[str, Endpoint]]:
    """Triton's HTTP and gRPC ports, then the router's (when given)."""
    direct = [
        ("triton", Endpoint("http", triton.http_address)),
        ("triton", Endpoint("grpc", triton.grpc_address)),
    ]
    if router is None:
        return direct
    return [
        *direct,
        ("router", Endpoint("http", router.http_address)),
        ("router", Endpoint("grpc", router.grpc_address)),
    ]


def texts(module, name: str, values: list[str | bytes]):
    tensor = module.InferInput(name, [len(values), 1], "BYTES")
    raw = [v if isinstance(v, bytes) else v.encode() for v in values]
    tensor.set_data_from_numpy(np.array([[v] for v in raw], dtype=object))
    return tensor


@dataclass(frozen=True)
class Mistake:
    what: str
    model: str
    inputs: Callable  # tritonclient module -> input tensors
    words: str  # what the message must say


MISTAKES = [
    Mistake("text that is not UTF-8", "embedder",
            lambda m: [texts(m, INPUT_TEXT, [b"fine", b"bad \xff bytes"])],
            "TEXT[1] is not valid UTF-8 (byte 0xff at offset 4)"),
    Mistake("a text over the byte limit", "embedder",
            lambda m: [texts(m, INPUT_TEXT, ["x" * (MAX_TEXT_BYTES + 1)])],
            f"TEXT[0] is {MAX_TEXT_BYTES + 1} bytes, over the limit of {MAX_TEXT_BYTES} bytes"),
    Mistake("an unknown TEXT_TYPE", "embedder",
            lambda m: [texts(m, INPUT_TEXT, ["a", "b"]),
                       texts(m, INPUT_TEXT_TYPE, ["query", "passage"])],
            "TEXT_TYPE[1] is 'passage'; use one of ('query', 'document')"),
    Mistake("a TEXT_TYPE over its byte limit", "embedder",
            lambda m: [texts(m, INPUT_TEXT, ["a"]), texts(m, INPUT_TEXT_TYPE, ["q" * 65])],
            "TEXT_TYPE[0] is 65 bytes, over the limit of 64 bytes per text; use one of"),
    Mistake("a query that is not UTF-8", "reranker",
            lambda m: [texts(m, INPUT_QUERY, [b"\xc3("]), texts(m, INPUT_TEXT, ["doc"])],
            "QUERY[0] is not valid UTF-8"),
    Mistake("more rows than the batch size", "embedder",
            lambda m: [texts(m, INPUT_TEXT, ["fish"] * (MAX_BATCH_SIZE + 1))],
            f"batch-size must be <= {MAX_BATCH_SIZE}"),
    Mistake("a wrong input name", "embedder",
            lambda m: [texts(m, "TEXTS", ["a"])], "unexpected inference input 'TEXTS'"),
    Mistake("fewer queries than documents", "reranker",
            lambda m: [texts(m, INPUT_QUERY, ["q"]), texts(m, INPUT_TEXT, ["a", "b"])],
            "'QUERY' batch size does not match"),
]  # fmt: skip


def good_request(endpoint: Endpoint, model: str) -> np.ndarray:
    module, client = MODULES[endpoint.protocol], endpoint.client()
    if model == "reranker":
        inputs = [texts(module, INPUT_QUERY, ["fish?"]), texts(module, INPUT_TEXT, ["fish"])]
        return client.infer(model, inputs).as_numpy(OUTPUT_SCORE)
    return client.infer(model, [texts(module, INPUT_TEXT, ["fish"])]).as_numpy(OUTPUT_EMBEDDING)


def retries(router) -> float:
    samples = router.router.metrics.retries.collect()[0].samples
    return sum(s.value for s in samples if s.name.endswith("_total"))


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.what for m in MISTAKES])
def test_a_clients_mistake_is_400_or_invalid_argument_everywhere(triton, router, mistake) -> None:
    for where, endpoint in endpoints(triton, router):
        module, client = MODULES[endpoint.protocol], endpoint.client()
        retried_before = retries(router)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(mistake.model, mistake.inputs(module))
        error = refused.value
        context = f"{where} {endpoint.protocol}: {error}"
        assert error.status() == CLIENT_MISTAKE[endpoint.protocol], context
        assert mistake.words in error.message(), context
        # Refused once, by the replica asked: the router sent it to no other (every attempt
        # after the first is counted as a retry, by reason).
        assert retries(router) == retried_before, context
        assert good_request(endpoint, mistake.model).shape[0] == 1, context


def test_the_router_passes_the_message_unchanged(triton, router) -> None:
    mistake = MISTAKES[0]
    messages = {}
    for where, endpoint in endpoints(triton, router):
        with pytest.raises(InferenceServerException) as refused:
            endpoint.client().infer(mistake.model, mistake.inputs(MODULES[endpoint.protocol]))
        messages[where, endpoint.protocol] = refused.value.message()
    assert len(set(messages.values())) == 1, messages


def test_a_server_fault_stays_500_or_internal(triton) -> None:
    # The encode step's graph cannot run ids past its vocabulary: the request is well formed
    # (right names, types and shapes), so the failure is the server's to answer, as INTERNAL.
    # (Straight to Triton: the router serves entries, not their steps.)
    ids = np.array([[1, 10**6]], dtype=np.int64)
    config = httpclient.InferenceServerClient(triton.http_address).get_model_config(
        "embedder__encode"
    )
    for where, endpoint in endpoints(triton, None):
        module, client = MODULES[endpoint.protocol], endpoint.client()
        inputs = []
        for name in (i["name"] for i in config["input"]):
            tensor = module.InferInput(name, list(ids.shape), "INT64")
            tensor.set_data_from_numpy(ids if name == "input_ids" else np.ones_like(ids))
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as failed:
            client.infer("embedder__encode", inputs)
        context = f"{where} {endpoint.protocol}: {failed.value}"
        assert failed.value.status() == SERVER_FAULT[endpoint.protocol], context
        assert "onnxruntime failed on this request" in failed.value.message(), context
        assert good_request(endpoint, "embedder").shape[0] == 1, context


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_client_splits_texts_past_the_batch_size_and_keeps_their_order(
    triton, router, protocol
) -> None:
    many = [f"text number {i}" for i in range(MAX_BATCH_SIZE * 2 + 1)]
    documents = [f"document {i} about fish" for i in range(MAX_BATCH_SIZE + 2)]
    for endpoint in (e for _, e in endpoints(triton, router) if e.protocol == protocol):
        client = shoal_client.connect(endpoint.address, protocol)
        vectors = shoal_client.embed(client, "embedder", many, protocol=protocol)
        one_by_one = [shoal_client.embed(client, "embedder", [t], protocol=protocol) for t in many]
        np.testing.assert_allclose(vectors, np.concatenate(one_by_one), rtol=0, atol=1e-5)
        scores = shoal_client.rerank(client, "reranker", "fish?", documents, protocol=protocol)
        alone = [shoal_client.rerank(client, "reranker", "fish?", [d], protocol=protocol)[0]
                 for d in documents]  # fmt: skip
        np.testing.assert_allclose(scores, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_call_on_the_wrong_task_names_the_command_that_fits(triton, router, protocol) -> None:
    for endpoint in (e for _, e in endpoints(triton, router) if e.protocol == protocol):
        client = shoal_client.connect(endpoint.address, protocol)
        with pytest.raises(shoal_client.WrongTask) as embedding_a_reranker:
            shoal_client.embed(client, "reranker", ["a"], protocol=protocol)
        assert "'reranker' serves the rerank task (it answers SCORE, not EMBEDDING)" in str(
            embedding_a_reranker.value
        )
        assert "use `shoal rerank reranker QUERY DOC...`" in str(embedding_a_reranker.value)
        with pytest.raises(shoal_client.WrongTask) as reranking_an_embedder:
            shoal_client.rerank(client, "embedder", "q", ["a"], protocol=protocol)
        assert "use `shoal embed embedder TEXT...`" in str(reranking_an_embedder.value)


def test_describe_reads_the_batch_size_and_task_over_both_protocols(triton) -> None:
    for protocol, address in (("http", triton.http_address), ("grpc", triton.grpc_address)):
        client = shoal_client.connect(address, protocol)
        interface = shoal_client.describe(client, "reranker")
        assert interface.max_batch_size == MAX_BATCH_SIZE
        assert interface.task == "rerank"
        step = shoal_client.describe(client, "embedder__tokenize")
        assert step.task is None
        assert replace(interface, outputs=()).task is None
