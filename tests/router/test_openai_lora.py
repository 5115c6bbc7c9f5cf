"""`POST /v1/embeddings` with shoal's `adapter` field on an entry exported with LoRA adapters: the
router sends ADAPTER with every row, so the vectors are the adapter's (the same as plain
tritonclient with ADAPTER); an adapter the entry does not have, or a model without adapters, is
refused at the router naming the adapters, before Triton is called."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.contract import INPUT_ADAPTER, INPUT_TEXT, OUTPUT_EMBEDDING
from tests.router.support import router_over_repository, serve_entries
from tests.router.test_openai import direct, post
from tests.support.lora import ADAPTERS, build_adapters, export_with_adapters

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "emb"
TEXTS = ["A shoal of fish.", "The contract ends in May.", ""]


@pytest.fixture(scope="module")
def repository(tiny_model, tmp_path_factory):
    base = tiny_model("bert")
    adapters = build_adapters(base, tmp_path_factory.mktemp("router-lora-adapters"))
    path = tmp_path_factory.mktemp("router-lora") / "repository"
    export_with_adapters(base, adapters, path, NAME)
    return path


@pytest.fixture(scope="module")
def triton(repository, tmp_path_factory):
    yield from serve_entries(repository, [NAME], tmp_path_factory)


@pytest.fixture(scope="module")
def router(triton, repository):
    with router_over_repository(repository, [triton]) as running:
        yield running


def embeddings(router, **fields) -> np.ndarray:
    answer = post(router, "/v1/embeddings", {"model": NAME, "input": TEXTS, **fields})
    assert answer.status_code == 200, answer.text
    return np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)


def test_each_adapter_gives_what_tritonclient_gets_with_adapter(router, triton) -> None:
    base = embeddings(router)
    np.testing.assert_array_equal(base, direct(triton, NAME, {INPUT_TEXT: TEXTS}, OUTPUT_EMBEDDING))
    for adapter in ADAPTERS:
        got = embeddings(router, adapter=adapter)
        inputs = {INPUT_TEXT: TEXTS, INPUT_ADAPTER: [adapter] * len(TEXTS)}
        np.testing.assert_array_equal(got, direct(triton, NAME, inputs, OUTPUT_EMBEDDING))
        assert (np.sum(got * base, axis=1) < 0.99).any(), adapter  # the adapter changed them


def test_an_adapter_the_entry_lacks_is_refused_naming_its_adapters(router) -> None:
    answer = post(router, "/v1/embeddings", {"model": NAME, "input": TEXTS, "adapter": "sports"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "adapter"
    assert "'sports'" in error["message"] and all(a in error["message"] for a in ADAPTERS)
