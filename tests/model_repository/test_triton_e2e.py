"""Entries served by a real Triton (the nvidia-pytriton build, portable runtime), called with plain
tritonclient over HTTP and gRPC, compared with the PyTorch reference; bad input gets a clear error
and the server keeps serving. One server per module, loading every entry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.model_repository.private_export import (
    export_tiny,
    reference_embeddings,
    reference_scores,
)

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

EMBEDDER = "tiny-bert-embed"
DECODER = "tiny-qwen2-embed"  # last-token pooling, left padding
RERANKER = "tiny-reranker"
SCORE_TOLERANCE = 1e-4  # max abs difference of rerank scores vs PyTorch (fp32)
TEXTS = [
    "A shoal of small fish moves as one.",
    "Triton serves many small models",
    "Café, naïve, 東京 🐟",
    "fish",
]


@pytest.fixture(scope="module")
def bert_checkpoint(tiny_model) -> Path:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def qwen2_checkpoint(tiny_model) -> Path:
    return tiny_model("qwen2")


@pytest.fixture(scope="module")
def reranker_checkpoint(tiny_model) -> Path:
    return tiny_model("reranker")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    bert_checkpoint: Path,
    qwen2_checkpoint: Path,
    reranker_checkpoint: Path,
) -> Iterator:
    from shoal.runtime.installation import TritonNotInstalled, locate_triton
    from shoal.runtime.triton import TritonServer

    try:
        installation = locate_triton()
    except TritonNotInstalled as exc:
        pytest.skip(f"Triton is not available: {exc}")
    repository = tmp_path_factory.mktemp("e2e") / "repository"
    repository.mkdir()
    layouts = [
        export_tiny(bert_checkpoint, repository, EMBEDDER, "bert"),
        export_tiny(qwen2_checkpoint, repository, DECODER, "qwen2"),
        export_tiny(reranker_checkpoint, repository, RERANKER, "reranker"),
    ]
    models = [m for layout in layouts for m in layout.triton_models]
    log_path = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    with TritonServer(
        repository, load_models=models, installation=installation, log_path=log_path
    ) as running:
        yield running


def text_input(module, name: str, texts: list, dtype: str = "BYTES"):
    values = np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=object)
    tensor = module.InferInput(name, [len(texts), 1], dtype)
    tensor.set_data_from_numpy(values)
    return tensor


def embed(
    server,
    texts: list,
    protocol: str = "http",
    text_type: str | None = None,
    model: str = EMBEDDER,
) -> np.ndarray:
    module = httpclient if protocol == "http" else grpcclient
    address = server.http_address if protocol == "http" else server.grpc_address
    client = module.InferenceServerClient(address)
    inputs = [text_input(module, "TEXT", texts)]
    if text_type is not None:
        inputs.append(text_input(module, "TEXT_TYPE", [text_type] * len(texts)))
    result = client.infer(model, inputs, outputs=[module.InferRequestedOutput("EMBEDDING")])
    return result.as_numpy("EMBEDDING")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_embeddings_match_pytorch_over_both_protocols(server, bert_checkpoint, protocol) -> None:
    got = embed(server, TEXTS, protocol)
    assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
    assert min_cosine(got, reference_embeddings(bert_checkpoint, TEXTS)) >= 0.9999


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_left_padded_last_token_embedder_matches_pytorch(
    server, qwen2_checkpoint, protocol
) -> None:
    got = embed(server, TEXTS, protocol, model=DECODER)
    expected = reference_embeddings(qwen2_checkpoint, TEXTS, family="qwen2")
    assert min_cosine(got, expected) >= 0.9999


def rerank(server, queries: list[str], documents: list[str], protocol: str = "http") -> np.ndarray:
    module = httpclient if protocol == "http" else grpcclient
    address = server.http_address if protocol == "http" else server.grpc_address
    client = module.InferenceServerClient(address)
    inputs = [text_input(module, "QUERY", queries), text_input(module, "TEXT", documents)]
    return client.infer(RERANKER, inputs).as_numpy("SCORE")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_rerank_scores_match_pytorch(server, reranker_checkpoint, protocol) -> None:
    queries = ["where do fish live?"] * 3 + ["capital of France"]
    documents = ["Fish live in water, rivers, lakes and seas.", "Paris", "", "fish " * 100]
    got = rerank(server, queries, documents, protocol)
    assert got.shape == (4, 1) and got.dtype == np.float32
    expected = np.array(reference_scores(reranker_checkpoint, queries, documents))
    assert np.abs(got[:, 0] - expected).max() <= SCORE_TOLERANCE


def test_rerank_with_unequal_queries_and_documents_is_refused(server) -> None:
    client = httpclient.InferenceServerClient(server.http_address)
    inputs = [text_input(httpclient, "QUERY", ["q"]), text_input(httpclient, "TEXT", ["a", "b"])]
    # Triton compares the batch sizes of the ensemble's inputs before any step runs.
    with pytest.raises(InferenceServerException, match="'QUERY' batch size does not match"):
        client.infer(RERANKER, inputs)
    assert rerank(server, ["q"], ["a"]).shape == (1, 1)


def test_text_type_query_uses_the_query_prefix(server, bert_checkpoint) -> None:
    got = embed(server, TEXTS[:2], text_type="query")
    assert min_cosine(got, reference_embeddings(bert_checkpoint, TEXTS[:2], "query: ")) >= 0.9999
    mixed_client = httpclient.InferenceServerClient(server.http_address)
    inputs = [
        text_input(httpclient, "TEXT", TEXTS[:2]),
        text_input(httpclient, "TEXT_TYPE", ["query", "document"]),
    ]
    mixed = mixed_client.infer(EMBEDDER, inputs).as_numpy("EMBEDDING")
    assert min_cosine(mixed[:1], got[:1]) >= 0.9999
    assert min_cosine(mixed[1:], embed(server, TEXTS[1:2])) >= 0.9999


@pytest.mark.parametrize(("model", "family"), [(EMBEDDER, "bert"), (DECODER, "qwen2")])
def test_concurrent_requests_of_different_lengths_are_batched_and_split_back(
    server, request, model, family
) -> None:
    checkpoint = request.getfixturevalue(f"{family}_checkpoint")
    texts = [" ".join(["fish"] * n) for n in range(1, 17)]
    client = grpcclient.InferenceServerClient(server.grpc_address)
    results: dict[int, np.ndarray] = {}
    errors: list[Exception] = []
    done = threading.Semaphore(0)

    def callback(index: int):
        def on_result(result, error) -> None:
            if error is not None:
                errors.append(error)
            else:
                results[index] = result.as_numpy("EMBEDDING")
            done.release()

        return on_result

    before = _encode_counts(client, model)
    for index, text in enumerate(texts):
        client.async_infer(model, [text_input(grpcclient, "TEXT", [text])], callback(index))
    for _ in texts:
        assert done.acquire(timeout=60)
    assert errors == []
    got = np.concatenate([results[i] for i in range(len(texts))])
    assert min_cosine(got, reference_embeddings(checkpoint, texts, family=family)) >= 0.9999
    after = _encode_counts(client, model)
    inferences, executions = (a - b for a, b in zip(after, before, strict=True))
    assert inferences == len(texts)
    assert executions < inferences, "the dynamic batcher formed no batch of several requests"


def _encode_counts(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(f"{model}__encode", as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def test_empty_string_and_over_long_text_are_embedded(server, bert_checkpoint) -> None:
    long_text = "fish shoal " * 300  # ~600 tokens, far over max_length (32): truncated
    got = embed(server, ["", long_text])
    assert min_cosine(got, reference_embeddings(bert_checkpoint, ["", long_text])) >= 0.9999
    truncated_prefix = embed(server, ["fish shoal " * 40])
    assert min_cosine(got[1:], truncated_prefix) >= 0.99999


def expect_error(server, inputs_by_protocol, fragment: str) -> None:
    """The request fails with `fragment` in its message over HTTP and gRPC, and the server then
    still answers a good request."""
    for module, address in ((httpclient, server.http_address), (grpcclient, server.grpc_address)):
        client = module.InferenceServerClient(address)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(EMBEDDER, inputs_by_protocol(module))
        assert fragment in str(caught.value), str(caught.value)
        assert embed(server, TEXTS[:1], "http" if module is httpclient else "grpc").shape == (1, 32)


def test_non_utf8_bytes_are_refused_naming_the_row(server) -> None:
    expect_error(
        server,
        lambda m: [text_input(m, "TEXT", ["fine", b"bad \xff\xfe bytes"])],
        "TEXT[1] is not valid UTF-8 (byte 0xff at offset 4)",
    )


def test_a_text_over_the_byte_limit_is_refused(server) -> None:
    expect_error(
        server,
        lambda m: [text_input(m, "TEXT", ["x" * 5000])],
        "TEXT[0] is 5000 bytes, over the limit of 4096 bytes per text",
    )


def test_an_unknown_text_type_is_refused(server) -> None:
    expect_error(
        server,
        lambda m: [
            text_input(m, "TEXT", ["a", "b"]),
            text_input(m, "TEXT_TYPE", ["query", "passage"]),
        ],
        "TEXT_TYPE[1] is 'passage'; use one of ('query', 'document')",
    )


def test_an_empty_batch_is_refused(server) -> None:
    def empty(module):
        tensor = module.InferInput("TEXT", [0, 1], "BYTES")
        tensor.set_data_from_numpy(np.zeros((0, 1), dtype=object))
        return [tensor]

    # Triton refuses it before the tokenize step runs (its message: "expected 1 string elements
    # for inference input 'TEXT' ..., got 0"); the step refuses an empty batch too if one arrives.
    expect_error(server, empty, "inference input 'TEXT' for model 'tiny-bert-embed', got 0")


def test_a_wrong_input_name_is_refused(server) -> None:
    expect_error(
        server, lambda m: [text_input(m, "TEXTS", ["a"])], "unexpected inference input 'TEXTS'"
    )


def test_a_wrong_input_dtype_is_refused(server) -> None:
    def ints(module):
        tensor = module.InferInput("TEXT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.zeros((1, 1), dtype=np.int32))
        return [tensor]

    expect_error(server, ints, "data-type is 'INT32', but model 'tiny-bert-embed' expects 'BYTES'")


def test_a_batch_over_max_batch_size_is_refused(server) -> None:
    expect_error(
        server,
        lambda m: [text_input(m, "TEXT", ["fish"] * 9)],
        "batch-size must be <= 8",
    )
