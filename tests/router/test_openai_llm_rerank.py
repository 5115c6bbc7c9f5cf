"""`POST /v1/rerank` through the router on an LLM reranker (a tiny Qwen3ForCausalLM exported with
task rerank): the router needs nothing new, the scores are the entry's (plain tritonclient), the
order is theirs, and usage counts the tokens the model ran, the prompt's included."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.contract import INPUT_QUERY, INPUT_TEXT, OUTPUT_SCORE
from shoal.model_repository.layout import EntryLayout
from tests.router.support import router_over_repository, serve_entries
from tests.router.test_openai import direct, post

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "qwen-rerank"
QUERY = "where do fish live?"
DOCUMENTS = ["Fish live in water.", "Paris is in France.", "A shoal of fish swims.", ""]


@pytest.fixture(scope="module")
def repository(tiny_model, tmp_path_factory):
    from shoal.exporter import ExportOptions, export_model

    path = tmp_path_factory.mktemp("router-llm-rerank") / "repository"
    options = ExportOptions(task="rerank", score="sigmoid", max_length=160, runtime="portable")
    export_model(str(tiny_model("llm-reranker")), NAME, path, options)
    return path


@pytest.fixture(scope="module")
def triton(repository, tmp_path_factory):
    yield from serve_entries(repository, [NAME], tmp_path_factory)


@pytest.fixture(scope="module")
def router(triton, repository):
    with router_over_repository(repository, [triton]) as running:
        yield running


def test_rerank_gives_the_entrys_scores_best_first(router, triton, repository) -> None:
    from shoal.model_repository.repository import read_entry
    from shoal.tokenization import TextEncoder

    answer = post(
        router, "/v1/rerank", {"model": NAME, "query": QUERY, "documents": DOCUMENTS, "top_n": 3}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    queries = [QUERY] * len(DOCUMENTS)
    scores = direct(triton, NAME, {INPUT_QUERY: queries, INPUT_TEXT: DOCUMENTS}, OUTPUT_SCORE)
    scores = scores[:, 0]
    assert ((scores > 0) & (scores < 1)).all()  # P("yes")
    order = list(np.argsort(-scores, kind="stable"))[:3]
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == [float(scores[i]) for i in order]
    # usage: every token the model ran, the prompt's prefix and suffix included
    layout = EntryLayout(repository, NAME)
    settings = read_entry(repository, NAME).manifest.extra["tokenization"]
    encoder = TextEncoder.from_file(layout.tokenizer_dir / "tokenizer.json", settings)
    ran = int(encoder.encode(queries, pairs=DOCUMENTS)["attention_mask"].sum())
    prompt = settings["prompt"]
    assert ran > len(DOCUMENTS) * (len(prompt["prefix_ids"]) + len(prompt["suffix_ids"]))
    assert body["usage"]["total_tokens"] == ran
