"""`POST /v1/embeddings` and `POST /v1/rerank` through the router give the numbers the same entry
gives through plain tritonclient, on tiny real exports (a BERT embedder and a cross-encoder
reranker, portable runtime) served by one real Triton."""

from __future__ import annotations

import base64
from dataclasses import replace

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from shoal.contract import INPUT_QUERY, INPUT_TEXT, OUTPUT_EMBEDDING, OUTPUT_SCORE
from shoal.model_repository.layout import EntryLayout
from shoal.model_repository.repository import read_entry
from shoal.router.static_source import StaticRoute
from tests.router.support import RouterThread, replica_of, router_over_repository, serve_entries

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

TEXTS = ["a shoal of fish", "Triton serves models", "", "fish " * 80, "ünïcödé ✓"]
QUERY = "where do fish live?"
DOCUMENTS = ["Fish live in water.", "Paris is in France.", "A shoal of fish swims.", "Rivers."]


@pytest.fixture(scope="module")
def repository(tiny_model, tmp_path_factory):
    from shoal.exporter import ExportOptions, export_model

    path = tmp_path_factory.mktemp("router-openai") / "repository"
    for family, name in (("bert", "embedder"), ("reranker", "reranker")):
        export_model(str(tiny_model(family)), name, path, ExportOptions(runtime="portable"))
    return path


@pytest.fixture(scope="module")
def triton(repository, tmp_path_factory):
    yield from serve_entries(repository, ["embedder", "reranker"], tmp_path_factory)


@pytest.fixture(scope="module")
def manifests(repository):
    return {name: read_entry(repository, name).manifest for name in ("embedder", "reranker")}


@pytest.fixture(scope="module")
def router(triton, repository):
    with router_over_repository(repository, [triton]) as running:
        assert sorted(running.source.models()) == ["embedder", "reranker"]
        yield running


def direct(triton, model: str, inputs: dict[str, list[str]], output: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(triton.http_address)
    tensors = []
    for name, texts in inputs.items():
        tensor = httpclient.InferInput(name, [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        tensors.append(tensor)
    return client.infer(model, tensors).as_numpy(output)


def token_count(repository, model: str, *texts: str) -> int:
    from tokenizers import Tokenizer

    folder = EntryLayout(repository, model).tokenizer_dir
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return len(tokenizer.encode(*texts).ids)


def post(router, path: str, payload: dict) -> requests.Response:
    return requests.post(router.http_url + path, json=payload, timeout=60)


def test_embeddings_equal_tritonclient(router, triton, repository) -> None:
    answer = post(router, "/v1/embeddings", {"model": "embedder", "input": TEXTS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    got = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    want = direct(triton, "embedder", {INPUT_TEXT: TEXTS}, OUTPUT_EMBEDDING)
    np.testing.assert_array_equal(got, want)
    assert [row["index"] for row in body["data"]] == list(range(len(TEXTS)))
    assert body["object"] == "list" and body["model"] == "embedder"
    tokens = sum(token_count(repository, "embedder", t) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_a_single_string_and_base64_encoding(router, triton) -> None:
    answer = post(
        router, "/v1/embeddings",
        {"model": "embedder", "input": TEXTS[0], "encoding_format": "base64"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    raw = base64.b64decode(answer.json()["data"][0]["embedding"])
    got = np.frombuffer(raw, dtype="<f4")
    want = direct(triton, "embedder", {INPUT_TEXT: TEXTS[:1]}, OUTPUT_EMBEDDING)[0]
    np.testing.assert_array_equal(got, want)


def test_more_texts_than_the_batch_size_are_sent_in_chunks(router, triton, manifests) -> None:
    texts = [f"text number {i}" for i in range(manifests["embedder"].max_batch_size * 2 + 3)]
    answer = post(router, "/v1/embeddings", {"model": "embedder", "input": texts})
    assert answer.status_code == 200, answer.text
    got = np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)
    want = np.concatenate([
        direct(triton, "embedder", {INPUT_TEXT: texts[i : i + 8]}, OUTPUT_EMBEDDING)
        for i in range(0, len(texts), 8)
    ])  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_dimensions_other_than_the_entrys_are_refused_without_matryoshka(router, manifests) -> None:
    dims = manifests["embedder"].dims
    ok = post(router, "/v1/embeddings", {"model": "embedder", "input": "a", "dimensions": dims})
    assert ok.status_code == 200
    answer = post(router, "/v1/embeddings", {"model": "embedder", "input": "a", "dimensions": 4})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "dimensions" and f"only {dims}" in error["message"]


def test_dimensions_truncate_and_renormalize_where_the_entry_allows(triton, manifests) -> None:
    manifest = manifests["embedder"]
    allowing = replace(manifest, extra={**manifest.extra, "matryoshka": True})
    with RouterThread([StaticRoute("embedder", (replica_of(triton),), allowing)], 0.5) as running:
        answer = post(
            running, "/v1/embeddings", {"model": "embedder", "input": TEXTS[:2], "dimensions": 8}
        )
        assert answer.status_code == 200, answer.text
    got = np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)
    want = direct(triton, "embedder", {INPUT_TEXT: TEXTS[:2]}, OUTPUT_EMBEDDING)[:, :8]
    if manifest.normalize:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_rerank_equals_tritonclient_sorted_with_top_n_and_documents(
    router, triton, repository
) -> None:
    answer = post(
        router, "/v1/rerank",
        {"model": "reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": 3,
         "return_documents": True},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    scores = direct(
        triton,
        "reranker",
        {INPUT_QUERY: [QUERY] * len(DOCUMENTS), INPUT_TEXT: DOCUMENTS},
        OUTPUT_SCORE,
    )[:, 0]
    order = list(np.argsort(-scores, kind="stable"))[:3]
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == [float(scores[i]) for i in order]
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order]
    tokens = sum(token_count(repository, "reranker", QUERY, d) for d in DOCUMENTS)
    assert body["usage"]["total_tokens"] == tokens


def test_tei_shaped_rerank_requests_are_accepted(router) -> None:
    answer = post(router, "/v1/rerank", {"model": "reranker", "query": QUERY, "texts": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    assert all("document" not in r for r in results)


@pytest.mark.parametrize(
    ("path", "payload", "status", "words"),
    [
        (
            "/v1/rerank",
            {"model": "embedder", "query": "q", "documents": ["d"]},
            400,
            "'embed' model",
        ),
        ("/v1/embeddings", {"model": "reranker", "input": "a"}, 400, "'rerank' model"),
        ("/v1/embeddings", {"model": "embedder", "input": [1, 2]}, 400, "token arrays"),
        (
            "/v1/embeddings",
            {"model": "embedder", "input": "a", "adapter": "legal"},
            400,
            "has no LoRA adapters",
        ),
    ],
)
def test_openai_errors_have_the_openai_shape(router, path, payload, status, words) -> None:
    answer = post(router, path, payload)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"


def test_an_error_from_the_entry_keeps_tritons_status_and_message(router, triton) -> None:
    text = "\u00e9" * 600_000  # over the tokenize step's byte limit per text
    answer = post(router, "/v1/embeddings", {"model": "embedder", "input": [text]})
    with pytest.raises(Exception) as direct_error:
        direct(triton, "embedder", {INPUT_TEXT: [text]}, OUTPUT_EMBEDDING)
    error = answer.json()["error"]
    assert answer.status_code == int(direct_error.value.status()) == 400  # the client's mistake
    assert "over the limit of" in error["message"] and error["code"] == "replica_error"
    assert error["type"] == "invalid_request_error"
