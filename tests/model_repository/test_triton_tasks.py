"""Every task, exported by `shoal.exporter.export_model` (portable runtime), served by a real
Triton and called with plain tritonclient over HTTP and gRPC, matches the exporter's independent
PyTorch reference on its probe set (padded batches, unicode, an empty string, a text longer than
max length: truncated, query-side probes where queries differ). Requests of different lengths
are batched by the dynamic batcher and split back correctly; bad input gets a clear error and
the server keeps serving.

Tolerances: dense and ColBERT vectors min cosine >= 0.9999; rerank scores and sparse weights
max |triton - reference| / max(1, |reference|) <= 1e-4 (fp32). One server for the module,
loading all six entries (18 Triton models)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.contract import INPUT_QUERY, INPUT_TEXT, INPUT_TEXT_TYPE, OUTPUTS_BY_TASK, Task
from tests.support.triton import serving_entries

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

MIN_COSINE = 0.9999
MAX_SCALED_DIFF = 1e-4
MAX_LENGTH = 32
MAX_TEXT_BYTES = 4096
# family -> the task its tiny model exports as (the adapter's default)
FAMILIES = {
    "bert": Task.EMBED,
    "qwen2": Task.EMBED,  # last-token pooling, left padding, instruction prefix
    "reranker": Task.RERANK,
    "colbert": Task.COLBERT,
    "splade": Task.SPARSE,
    "bge-m3": Task.MULTI,
}


@dataclass
class Exported:
    name: str
    task: Task
    adapter: Any
    plan: Any
    model: Any
    hf_tokenizer: Any
    max_batch_size: int


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from transformers import AutoTokenizer

    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint
    from shoal.exporter.export import export_model
    from shoal.exporter.options import ExportOptions
    from shoal.model_repository.entry import EntryOptions

    repository = tmp_path_factory.mktemp("tasks") / "repository"
    entries = {}
    for family, task in FAMILIES.items():
        checkpoint = tiny_model(family)
        options = ExportOptions(
            runtime="portable",
            max_length=MAX_LENGTH,
            # A 50 ms queue delay lets the batcher gather requests that the single tokenize
            # instance passes on one by one, so the batching test does not hang on timing.
            entry=EntryOptions(
                encode_threads=1,
                max_text_bytes=MAX_TEXT_BYTES,
                max_queue_delay_microseconds=50_000,
            ),
        )
        name = f"tiny-{family}"
        manifest = export_model(checkpoint, name, repository, options)
        assert manifest.task == task.value, family
        adapter = detect_adapter(inspect_checkpoint(checkpoint), None)
        entries[family] = Exported(
            name=name,
            task=task,
            adapter=adapter,
            plan=adapter.plan(options),
            model=adapter.load(),
            hf_tokenizer=AutoTokenizer.from_pretrained(str(checkpoint)),
            max_batch_size=manifest.max_batch_size,
        )
    return repository, entries


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    repository, entries = exported
    with serving_entries(
        repository, (e.name for e in entries.values()), tmp_path_factory
    ) as running:
        yield running


def test_the_exported_repository_checks_clean(exported) -> None:
    from shoal.model_repository.repository import check_repository

    repository, entries = exported
    reports = check_repository(repository)
    assert sorted(r.name for r in reports) == sorted(e.name for e in entries.values())
    assert {r.name: r.problems for r in reports if r.problems} == {}


def _bytes_input(module, name: str, texts: list[str]):
    tensor = module.InferInput(name, [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    return tensor


def client_for(server, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_address)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_address)


def infer(server, protocol: str, entry: Exported, run) -> dict[str, np.ndarray]:
    module, client = client_for(server, protocol)
    if entry.task is Task.RERANK:
        inputs = [
            _bytes_input(module, INPUT_QUERY, run.texts),
            _bytes_input(module, INPUT_TEXT, run.pairs),
        ]
    else:
        inputs = [
            _bytes_input(module, INPUT_TEXT, run.texts),
            _bytes_input(module, INPUT_TEXT_TYPE, [run.text_type] * len(run.texts)),
        ]
    outputs = OUTPUTS_BY_TASK[entry.task]
    result = client.infer(
        entry.name, inputs, outputs=[module.InferRequestedOutput(n) for n in outputs]
    )
    return {name: result.as_numpy(name) for name in outputs}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_task_matches_the_pytorch_reference_through_triton(
    server, exported, family: str, protocol: str
) -> None:
    from shoal.exporter.parity import probe_runs

    _, entries = exported
    entry = entries[family]
    worst: dict[str, float] = {}
    for run in probe_runs(entry.plan):
        got = infer(server, protocol, entry, run)
        for output in OUTPUTS_BY_TASK[entry.task]:
            assert got[output].shape[0] == len(run.texts), output
        merge_worst(worst, compare_with_reference(entry, run, got))
    assert_within_tolerance(family, worst)


def compare_with_reference(entry: Exported, run, got: dict[str, np.ndarray]) -> dict[str, float]:
    from shoal.exporter.parity import compare_text, reference_outputs

    worst: dict[str, float] = {}
    wanted = reference_outputs(entry.adapter, entry.model, entry.hf_tokenizer, entry.plan, run)
    for row, want in enumerate(wanted):
        figures = compare_text(entry.task, got, row, want)
        merge_worst(worst, {f"{o} {metric}": value for o, (metric, value) in figures.items()})
    return worst


def merge_worst(worst: dict[str, float], figures: dict[str, float]) -> None:
    for key, value in figures.items():
        pick = min if key.endswith("min_cosine") else max
        worst[key] = pick(worst.get(key, value), value)


def assert_within_tolerance(what: str, worst: dict[str, float]) -> None:
    assert worst, "nothing was compared"
    for key, value in worst.items():
        if key.endswith("min_cosine"):
            assert value >= MIN_COSINE, (what, key, value)
        else:
            assert value <= MAX_SCALED_DIFF, (what, key, value)


# ------------------------------------------------------------------ batching


@pytest.mark.parametrize("family", ["bert", "qwen2", "colbert"])
def test_concurrent_requests_of_different_lengths_are_batched_and_split_back(
    server, exported, family: str
) -> None:
    """16 one-text requests of 1..16 words in flight at once: the encode step pads them to the
    longest (right or left), runs them together, and each gets its own rows back."""
    from shoal.exporter.parity import ProbeRun

    _, entries = exported
    entry = entries[family]
    texts = [" ".join(["fish"] * n) for n in range(1, 17)]
    client = grpcclient.InferenceServerClient(server.grpc_address)
    results: dict[int, Any] = {}
    finished = threading.Semaphore(0)

    def callback(index: int):
        def on_result(result, error) -> None:
            results[index] = error if error is not None else result
            finished.release()

        return on_result

    outputs = OUTPUTS_BY_TASK[entry.task]
    before = encode_counts(client, entry.name)
    for index, text in enumerate(texts):
        inputs = [_bytes_input(grpcclient, INPUT_TEXT, [text])]
        client.async_infer(entry.name, inputs, callback(index))
    for _ in texts:
        assert finished.acquire(timeout=60)
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert errors == []
    worst: dict[str, float] = {}
    for index, text in enumerate(texts):
        got = {name: results[index].as_numpy(name) for name in outputs}
        merge_worst(worst, compare_with_reference(entry, ProbeRun("one", [text]), got))
    assert_within_tolerance(family, worst)
    after = encode_counts(client, entry.name)
    inferences, executions = (a - b for a, b in zip(after, before, strict=True))
    assert inferences == len(texts)
    assert executions < inferences, "the dynamic batcher formed no batch of several requests"


def encode_counts(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(f"{model}__encode", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_one_request_may_mix_queries_and_documents(server, exported) -> None:
    _, entries = exported
    entry = entries["colbert"]  # queries differ most: marker and [MASK] augmentation
    module, client = client_for(server, "http")
    texts = ["where do fish live?", "Fish live in water.", "capital of France"]
    types = ["query", "document", "query"]
    mixed = client.infer(
        entry.name,
        [_bytes_input(module, INPUT_TEXT, texts), _bytes_input(module, INPUT_TEXT_TYPE, types)],
    )
    for row, (text, text_type) in enumerate(zip(texts, types, strict=True)):
        alone = client.infer(
            entry.name,
            [
                _bytes_input(module, INPUT_TEXT, [text]),
                _bytes_input(module, INPUT_TEXT_TYPE, [text_type]),
            ],
        )
        length = int(alone.as_numpy("COLBERT_LENGTHS")[0, 0])
        assert int(mixed.as_numpy("COLBERT_LENGTHS")[row, 0]) == length
        got = mixed.as_numpy("COLBERT_VECTORS")[row, :length]
        want = alone.as_numpy("COLBERT_VECTORS")[0, :length]
        assert float((got * want).sum(axis=1).min()) >= MIN_COSINE


# ------------------------------------------------------------------ bad input


# How Triton says "the client's mistake" (the python steps answer INVALID_ARG), per protocol.
CLIENT_MISTAKE = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


def expect_error(server, exported, make_inputs, fragment: str, family: str = "bert") -> None:
    """The request fails as the client's mistake (400 / INVALID_ARGUMENT) with `fragment` in its
    message over HTTP and gRPC, and the server then still answers a good request."""
    _, entries = exported
    entry = entries[family]
    for protocol in ("http", "grpc"):
        module, client = client_for(server, protocol)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(entry.name, make_inputs(module))
        assert fragment in str(caught.value), str(caught.value)
        assert caught.value.status() == CLIENT_MISTAKE[protocol], str(caught.value)
        good_inputs = [_bytes_input(module, INPUT_TEXT, ["fish"])]
        if entry.task is Task.RERANK:
            good_inputs.append(_bytes_input(module, INPUT_QUERY, ["fish?"]))
        good = client.infer(entry.name, good_inputs)
        assert good.as_numpy(OUTPUTS_BY_TASK[entry.task][0]).shape[0] == 1


def test_non_utf8_bytes_are_refused_naming_the_row(server, exported) -> None:
    def inputs(module):
        tensor = module.InferInput(INPUT_TEXT, [2, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"fine"], [b"bad \xff\xfe bytes"]], dtype=object))
        return [tensor]

    expect_error(server, exported, inputs, "TEXT[1] is not valid UTF-8 (byte 0xff at offset 4)")


def test_a_text_over_the_byte_limit_is_refused(server, exported) -> None:
    expect_error(
        server,
        exported,
        lambda m: [_bytes_input(m, INPUT_TEXT, ["x" * (MAX_TEXT_BYTES + 1)])],
        f"TEXT[0] is {MAX_TEXT_BYTES + 1} bytes, over the limit of {MAX_TEXT_BYTES} bytes per text",
    )


def test_an_unknown_text_type_is_refused(server, exported) -> None:
    expect_error(
        server,
        exported,
        lambda m: [
            _bytes_input(m, INPUT_TEXT, ["a", "b"]),
            _bytes_input(m, INPUT_TEXT_TYPE, ["query", "passage"]),
        ],
        "TEXT_TYPE[1] is 'passage'; use one of ('query', 'document')",
    )


def test_an_empty_batch_is_refused(server, exported) -> None:
    def empty(module):
        tensor = module.InferInput(INPUT_TEXT, [0, 1], "BYTES")
        tensor.set_data_from_numpy(np.zeros((0, 1), dtype=object))
        return [tensor]

    # Triton refuses it before the tokenize step runs ("expected 1 string elements for inference
    # input 'TEXT' ..., got 0"); the step would refuse an empty batch too.
    expect_error(server, exported, empty, "inference input 'TEXT' for model 'tiny-bert', got 0")


def test_a_wrong_input_name_is_refused(server, exported) -> None:
    expect_error(
        server,
        exported,
        lambda m: [_bytes_input(m, "TEXTS", ["a"])],
        "unexpected inference input 'TEXTS'",
    )


def test_a_wrong_input_dtype_is_refused(server, exported) -> None:
    def ints(module):
        tensor = module.InferInput(INPUT_TEXT, [1, 1], "INT32")
        tensor.set_data_from_numpy(np.zeros((1, 1), dtype=np.int32))
        return [tensor]

    expect_error(
        server, exported, ints, "data-type is 'INT32', but model 'tiny-bert' expects 'BYTES'"
    )


def test_a_batch_over_max_batch_size_is_refused(server, exported) -> None:
    _, entries = exported
    limit = entries["bert"].max_batch_size
    expect_error(
        server,
        exported,
        lambda m: [_bytes_input(m, INPUT_TEXT, ["fish"] * (limit + 1))],
        f"batch-size must be <= {limit}",
    )


def test_rerank_with_unequal_queries_and_documents_is_refused(server, exported) -> None:
    # Triton compares the batch sizes of the ensemble's inputs before any step runs.
    expect_error(
        server,
        exported,
        lambda m: [_bytes_input(m, INPUT_QUERY, ["q"]), _bytes_input(m, INPUT_TEXT, ["a", "b"])],
        "'QUERY' batch size does not match",
        family="reranker",
    )


def test_an_unknown_model_is_refused(server) -> None:
    for protocol in ("http", "grpc"):
        module, client = client_for(server, protocol)
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.infer("no-such-model", [_bytes_input(module, INPUT_TEXT, ["a"])])
