"""Task `extract-zero-shot` end to end: a tiny random GLiNER (the `gliner` package's span model over
a tiny BERT) exported by `shoal.exporter.export_model`, served by a real Triton, called with plain
tritonclient over HTTP and gRPC with the labels (and a threshold) in each request. ENTITIES equal
gliner's own `predict_entities` on the same folder (label, start, end exactly, score to 1e-4); bad
labels or thresholds fail their own request with a message, and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.contract import INPUT_LABELS, INPUT_TEXT, INPUT_THRESHOLD, OUTPUT_ENTITIES, Task
from tests.support.concurrency import call_concurrently
from tests.support.triton import serving_entries

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "gliner"
SCORE_TOLERANCE = 1e-4
TEXTS = [
    "Paris is the capital of France and Bob lives there.",
    "Café naïve résumé, 東京は日本の首都です 🐟🚀 Москва",
    "",
    "fish",
]
LABELS = ["person", "city", "country"]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    pytest.importorskip("gliner", reason="the gliner family needs the `gliner` package")
    from gliner import GLiNER

    from shoal.exporter.export import export_model
    from shoal.exporter.options import ExportOptions
    from shoal.model_repository.entry import EntryOptions

    checkpoint = tiny_model("gliner")
    repository = tmp_path_factory.mktemp("gliner") / "repository"
    options = ExportOptions(
        runtime="portable",
        entry=EntryOptions(encode_threads=1, max_queue_delay_microseconds=50_000),
    )
    manifest = export_model(checkpoint, NAME, repository, options)
    assert manifest.task == Task.EXTRACT_ZERO_SHOT.value
    assert {r.output for r in manifest.parity} == {"span_logits", OUTPUT_ENTITIES}
    assert all(r.passed for r in manifest.parity)
    model = GLiNER.from_pretrained(str(checkpoint), local_files_only=True).eval()
    return repository, model


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    repository, _ = exported
    with serving_entries(repository, [NAME], tmp_path_factory) as running:
        yield running


def extract(
    server,
    protocol: str,
    texts: list[bytes],
    labels: list[Any],
    threshold: list[float] | None = None,
) -> list[list[dict]]:
    """One request: TEXT rows, LABELS rows (JSON lists, or raw bytes as given), THRESHOLD rows."""
    module = httpclient if protocol == "http" else grpcclient
    address = server.http_address if protocol == "http" else server.grpc_address
    client = module.InferenceServerClient(address)
    rows = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in labels]
    inputs = [module.InferInput(INPUT_TEXT, [len(texts), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[t] for t in texts], dtype=object))
    inputs.append(module.InferInput(INPUT_LABELS, [len(rows), 1], "BYTES"))
    inputs[1].set_data_from_numpy(np.array([[r] for r in rows], dtype=object))
    if threshold is not None:
        inputs.append(module.InferInput(INPUT_THRESHOLD, [len(threshold), 1], "FP32"))
        inputs[2].set_data_from_numpy(np.array([[t] for t in threshold], dtype=np.float32))
    result = client.infer(NAME, inputs, outputs=[module.InferRequestedOutput(OUTPUT_ENTITIES)])
    entities = result.as_numpy(OUTPUT_ENTITIES)
    assert entities.shape == (len(texts), 1)
    return [json.loads(value) for value in entities[:, 0]]


def assert_same_entities(text: str, got: list[dict], want: list[dict]) -> None:
    assert [(e["label"], e["start"], e["end"]) for e in got] == [
        (e["label"], e["start"], e["end"]) for e in want
    ], text
    for g, w in zip(got, want, strict=True):
        assert abs(g["score"] - w["score"]) <= SCORE_TOLERANCE, (text, g, w)
        assert g["text"] == text[g["start"] : g["end"]] == w["text"]
        assert set(g) == {"label", "score", "start", "end", "text"}


def test_shoal_repo_list_shows_the_task(exported, capsys: pytest.CaptureFixture[str]) -> None:
    from shoal.cli import main

    repository, _ = exported
    assert main(["repo", "list", str(repository)]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:2] == [NAME, "extract-zero-shot"]


def test_verify_reruns_parity_against_gliner(exported) -> None:
    from shoal.exporter import verify_entry

    repository, _ = exported
    results = verify_entry(repository / NAME)
    assert {r.output for r in results} == {"span_logits", OUTPUT_ENTITIES}
    assert all(r.passed for r in results)
    assert any(k.startswith("row-labels/") for k in results[0].details)  # per-text label sets


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_entities_equal_gliners_own_predictions(server, exported, protocol: str) -> None:
    _, model = exported
    found = 0
    for labels, threshold in ((LABELS, None), (["city"], 0.7), (["organization", "date"], 0.0)):
        rows = len(TEXTS)
        got = extract(
            server,
            protocol,
            [t.encode() for t in TEXTS],
            [labels] * rows,
            None if threshold is None else [threshold] * rows,
        )
        for text, entities in zip(TEXTS, got, strict=True):
            want = model.predict_entities(
                text, labels, threshold=0.5 if threshold is None else threshold
            )
            assert_same_entities(text, entities, want)
            found += len(want)
        assert got[2] == []  # the empty text
    assert found > 10  # the tiny model finds real spans: the comparison is not of empty lists


def test_each_text_gets_its_own_labels_and_threshold(server, exported) -> None:
    _, model = exported
    labels = [["person"], ["city", "country"], ["date"], ["fish", "animal", "person"]]
    thresholds = [0.5, 0.7, 0.0, 0.6]
    got = extract(server, "grpc", [t.encode() for t in TEXTS], labels, thresholds)
    for text, row_labels, threshold, entities in zip(TEXTS, labels, thresholds, got, strict=True):
        assert_same_entities(
            text, entities, model.predict_entities(text, row_labels, threshold=threshold)
        )
    assert {e["label"] for e in got[0]} <= {"person"}


def test_a_higher_threshold_keeps_fewer_entities(server) -> None:
    text = [TEXTS[0].encode()]
    low = extract(server, "http", text, [LABELS], [0.0])[0]
    high = extract(server, "http", text, [LABELS], [0.75])[0]
    assert len(high) < len(low)
    assert all(e["score"] > 0.75 for e in high)


def test_concurrent_requests_with_different_labels_get_their_own_entities(server, exported) -> None:
    """Requests of different word and label counts reach the encode step together; each runs
    with its own shapes, so each gets its own entities."""
    _, model = exported
    cases = [(t, labels) for t in TEXTS if t for labels in (["person"], LABELS)] * 2

    def call(i: int) -> list[dict]:
        text, labels = cases[i]
        return extract(server, "grpc", [text.encode()], [labels])[0]

    results = call_concurrently(call, len(cases))
    for i, (text, labels) in enumerate(cases):
        assert_same_entities(text, results[i], model.predict_entities(text, labels))


BAD_REQUESTS = [
    ([b"Paris"], [b'"person"'], None, r"LABELS\[0\] must be a JSON list of label strings"),
    ([b"Paris"], [[]], None, r"LABELS\[0\] is an empty list"),
    ([b"Paris"], [["person", " "]], None, r"LABELS\[0\] label 1 is empty"),
    (
        [b"Paris"],
        [[f"label{i}" for i in range(9)]],
        None,
        r"9 labels, over this model's limit of 8",
    ),
    ([b"Paris"], [b"[person"], None, r"LABELS\[0\] is not JSON"),
    (
        [b"Paris"],
        [["x <<ENT>>"]],
        None,
        r"LABELS\[0\] label 0 \('x <<ENT>>'\) contains the model's",
    ),
    ([b"Paris", b"\xff\xfe"], [["city"], ["city"]], None, r"TEXT\[1\] is not valid UTF-8"),
    ([b"Paris"], [b'["\xff"]'], None, r"LABELS\[0\] is not valid UTF-8"),
    ([b"Paris"], [["city"]], [1.5], r"THRESHOLD\[0\] is 1.5; a threshold is a score in \[0, 1\]"),
    ([b"Paris"], [["city"]], [-0.1], r"THRESHOLD\[0\] is -0.1"),
    ([b"Paris"], [["city"]], [float("nan")], r"THRESHOLD\[0\] is nan"),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_labels_and_thresholds_are_refused_per_request(server, protocol: str) -> None:
    for texts, labels, threshold, message in BAD_REQUESTS:
        with pytest.raises(InferenceServerException, match=message):
            extract(server, protocol, texts, labels, threshold)
    assert extract(server, protocol, [b"Paris"], [["city"]]) == extract(
        server, protocol, [b"Paris"], [["city"]]
    )


def test_a_request_without_labels_is_refused(server) -> None:
    client = httpclient.InferenceServerClient(server.http_address)
    text = httpclient.InferInput(INPUT_TEXT, [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"Paris"]], dtype=object))
    with pytest.raises(InferenceServerException, match=INPUT_LABELS):
        client.infer(NAME, [text])


def test_the_docs_example_runs_against_the_served_entry(server) -> None:
    """docs/tasks.md's `tasks-extract-zero-shot` example, as written but for the address."""
    from tests.docs.test_doc_examples import run_example_against

    run_example_against("tasks-extract-zero-shot", server.http_address)
