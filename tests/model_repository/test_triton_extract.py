"""Task `extract` end to end: tiny token classifiers (BERT, XLM-R and DeBERTa-v2 heads) exported by
`shoal.exporter.export_model`, served by a real Triton, called with plain tritonclient over HTTP
and gRPC. Each text's ENTITIES equal transformers' token-classification pipeline on the same
checkpoint (label, start and end exactly, score to 1e-4), for each aggregation strategy, with
non-ASCII texts, an empty text and a text longer than max length (both truncate to it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.contract import INPUT_TEXT, OUTPUT_ENTITIES, Task
from tests.support.concurrency import call_concurrently
from tests.support.triton import serving_entries

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

MAX_LENGTH = 32
PAD_TO_MULTIPLE_OF = 16
SCORE_TOLERANCE = 1e-4
# name -> (tiny model backbone, aggregation)
ENTRIES = {
    "ner": ("bert", "simple"),  # the name docs/tasks.md's example calls
    "ner-bert-first": ("bert", "first"),
    "ner-xlmr-max": ("xlm-roberta", "max"),
    "ner-deberta": ("deberta-v2", "simple"),
}
TEXTS = [
    "Paris is the capital of France.",
    "Café naïve résumé, 東京は日本の首都です 🐟🚀 Москва",
    "",
    "A shoal of small fish moves as one through the reef. " * 8,  # > MAX_LENGTH tokens
]


@dataclass
class Entry:
    name: str
    pipeline: Any  # transformers' token-classification pipeline on the same checkpoint


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Entry]]:
    import transformers

    from shoal.exporter.export import export_model
    from shoal.exporter.options import ExportOptions
    from shoal.model_repository.entry import EntryOptions

    repository = tmp_path_factory.mktemp("extract") / "repository"
    entries = []
    for name, (backbone, aggregation) in ENTRIES.items():
        checkpoint = tiny_model("token-classification", backbone=backbone)
        options = ExportOptions(
            runtime="portable",
            max_length=MAX_LENGTH,
            aggregation=aggregation,
            entry=EntryOptions(
                encode_threads=1,
                max_queue_delay_microseconds=50_000,
                # Rows padded past the longest text: token offsets and word ids padded too.
                pad_to_multiple_of=PAD_TO_MULTIPLE_OF if backbone == "xlm-roberta" else None,
            ),
        )
        manifest = export_model(checkpoint, name, repository, options)
        assert manifest.task == Task.EXTRACT.value
        assert manifest.extra["postprocessing"]["aggregation"] == aggregation
        assert {r.output for r in manifest.parity} == {"token_logits", OUTPUT_ENTITIES}
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
        tokenizer.model_max_length = MAX_LENGTH  # the pipeline truncates where the export does
        pipeline = transformers.pipeline(
            "token-classification",
            model=str(checkpoint),
            tokenizer=tokenizer,
            aggregation_strategy=aggregation,
            device="cpu",
        )
        entries.append(Entry(name, pipeline))
    return repository, entries


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    repository, entries = exported
    with serving_entries(repository, (e.name for e in entries), tmp_path_factory) as running:
        yield running


def client_for(server, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_address)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_address)


def extract(server, protocol: str, name: str, rows: list[bytes]) -> list[list[dict]]:
    module, client = client_for(server, protocol)
    tensor = module.InferInput(INPUT_TEXT, [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[r] for r in rows], dtype=object))
    result = client.infer(name, [tensor], outputs=[module.InferRequestedOutput(OUTPUT_ENTITIES)])
    entities = result.as_numpy(OUTPUT_ENTITIES)
    assert entities.shape == (len(rows), 1)
    return [json.loads(value) for value in entities[:, 0]]


def pipeline_entities(entry: Entry, text: str) -> list[dict]:
    return [
        {
            "label": e["entity_group"],
            "score": float(e["score"]),
            "start": e["start"],
            "end": e["end"],
        }
        for e in entry.pipeline(text)
    ]


def assert_same_entities(text: str, got: list[dict], want: list[dict]) -> None:
    assert [(e["label"], e["start"], e["end"]) for e in got] == [
        (e["label"], e["start"], e["end"]) for e in want
    ], text
    for g, w in zip(got, want, strict=True):
        assert abs(g["score"] - w["score"]) <= SCORE_TOLERANCE, (text, g, w)
        assert g["text"] == text[g["start"] : g["end"]]
        assert set(g) == {"label", "score", "start", "end", "text"}


def test_the_exported_repository_checks_clean(exported) -> None:
    from shoal.model_repository.repository import check_repository

    repository, entries = exported
    reports = check_repository(repository)
    assert sorted(r.name for r in reports) == sorted(e.name for e in entries)
    assert {r.name: r.problems for r in reports if r.problems} == {}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_entities_equal_the_transformers_pipeline(server, exported, protocol: str) -> None:
    _, entries = exported
    found = 0
    for entry in entries:
        got = extract(server, protocol, entry.name, [t.encode() for t in TEXTS])
        for text, entities in zip(TEXTS, got, strict=True):
            want = pipeline_entities(entry, text)
            assert_same_entities(text, entities, want)
            found += len(want)
        assert got[2] == []  # the empty text
    assert found > 10  # the tiny heads label real spans: the comparison is not of empty lists


def test_the_long_text_is_truncated_to_max_length(server, exported) -> None:
    _, entries = exported
    long_text = TEXTS[-1]
    for entry in entries:
        (entities,) = extract(server, "http", entry.name, [long_text.encode()])
        tokens = entry.pipeline.tokenizer(long_text, truncation=True, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        last_character = max(end for _, end in tokens)
        assert last_character < len(long_text)
        assert all(e["end"] <= last_character for e in entities)


def test_concurrent_requests_of_different_lengths_get_their_own_entities(server, exported) -> None:
    """The dynamic batcher joins requests of different lengths in the encode step; the token
    offsets travel per request, so each request's entities stay its own."""
    _, entries = exported
    entry = entries[0]
    texts = [t for t in TEXTS if t] * 4
    expected = {t: pipeline_entities(entry, t) for t in set(texts)}

    def call(i: int) -> list[dict]:
        return extract(server, "grpc", entry.name, [texts[i].encode()])[0]

    results = call_concurrently(call, len(texts))
    for i, text in enumerate(texts):
        assert_same_entities(text, results[i], expected[text])


def test_non_utf8_text_is_refused_and_the_server_keeps_serving(server, exported) -> None:
    _, entries = exported
    name = entries[0].name
    with pytest.raises(InferenceServerException, match=r"TEXT\[1\] is not valid UTF-8"):
        extract(server, "http", name, [b"Paris", b"\xff\xfe"])
    assert (
        extract(server, "http", name, [b"Paris"])[0] == extract(server, "grpc", name, [b"Paris"])[0]
    )


def test_the_docs_extract_example_runs_against_the_served_entry(server, exported) -> None:
    """docs/tasks.md's `tasks-extract` example, as written but for the server's address."""
    from tests.docs.test_doc_examples import run_example_against

    run_example_against("tasks-extract", server.http_address)
