"""LoRA adapters served end to end: a tiny BERT exported with two PEFT adapters, served by a real
Triton, called with plain tritonclient over HTTP and gRPC. Each row's EMBEDDING equals PEFT's
merged model of the adapter it names (absent or "" = the base), also when requests naming
different adapters share a batch in the encode step; an unknown adapter is refused for its own
request only, with the list of adapters."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.contract import INPUT_ADAPTER, INPUT_TEXT, OUTPUT_EMBEDDING
from tests.support.lora import (
    ADAPTERS,
    TEXTS,
    build_adapters,
    cosines,
    export_with_adapters,
    peft_embeddings,
)
from tests.support.triton import serving_entries

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "emb"
BROKEN = "emb-broken"  # its adapter file is corrupted by a test, then loaded
MIN_COSINE = 0.99999  # the fp32 parity bar
BASE = ""


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory):
    base = tiny_model("bert")
    adapters = build_adapters(base, tmp_path_factory.mktemp("adapters"))
    repository = tmp_path_factory.mktemp("lora-serving") / "repository"
    export_with_adapters(base, adapters, repository, NAME)
    export_with_adapters(base, adapters, repository, BROKEN)  # not loaded at start
    expected = {BASE: peft_embeddings(base, None, TEXTS)}
    expected |= {name: peft_embeddings(base, path, TEXTS) for name, path in adapters.items()}
    return repository, expected


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    repository, _ = exported
    with serving_entries(repository, [NAME], tmp_path_factory) as running:
        yield running


def embed(server, protocol: str, texts: list[str], adapters: list[str] | None) -> np.ndarray:
    module = httpclient if protocol == "http" else grpcclient
    address = server.http_address if protocol == "http" else server.grpc_address
    client = module.InferenceServerClient(address)
    inputs = [module.InferInput(INPUT_TEXT, [len(texts), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    if adapters is not None:
        inputs.append(module.InferInput(INPUT_ADAPTER, [len(texts), 1], "BYTES"))
        inputs[1].set_data_from_numpy(np.array([[a.encode()] for a in adapters], dtype=object))
    result = client.infer(NAME, inputs, outputs=[module.InferRequestedOutput(OUTPUT_EMBEDDING)])
    return result.as_numpy(OUTPUT_EMBEDDING)


def assert_rows_match(got: np.ndarray, expected, texts: list[int], adapters: list[str]) -> None:
    want = np.stack([expected[a][t] for t, a in zip(texts, adapters, strict=True)])
    figures = cosines(got, want)
    assert figures.min() >= MIN_COSINE, dict(zip(adapters, figures, strict=True))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_each_adapter_and_the_base_give_pefts_numbers(server, exported, protocol) -> None:
    _, expected = exported
    rows = list(range(len(TEXTS)))
    assert_rows_match(embed(server, protocol, TEXTS, None), expected, rows, [BASE] * len(rows))
    for name in [BASE, *ADAPTERS]:
        got = embed(server, protocol, TEXTS, [name] * len(TEXTS))
        assert_rows_match(got, expected, rows, [name] * len(rows))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_rows_of_one_request_may_name_different_adapters(server, exported, protocol) -> None:
    _, expected = exported
    names = [BASE, *ADAPTERS]
    rows = [i % len(TEXTS) for i in range(7)]
    adapters = [names[i % len(names)] for i in range(7)]
    got = embed(server, protocol, [TEXTS[r] for r in rows], adapters)
    assert_rows_match(got, expected, rows, adapters)


def _encode_statistics(server) -> tuple[int, int]:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    (stats,) = client.get_inference_statistics(f"{NAME}__encode", as_json=True)["model_stats"]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def _concurrently(calls: list) -> tuple[dict[int, object], dict[int, BaseException]]:
    """Run every call at once (released together by a barrier); results and errors by index."""
    results: dict[int, object] = {}
    errors: dict[int, BaseException] = {}
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # noqa: BLE001  reported by the caller
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def test_concurrent_requests_for_mixed_adapters_each_get_their_own(server, exported) -> None:
    """The dynamic batcher joins requests naming different adapters into one encode batch; the
    step runs it once per adapter and every request still gets its own adapter's vectors."""
    _, expected = exported
    chooser = random.Random(7)
    names = [BASE, *ADAPTERS]
    plan = [
        (chooser.choice(["http", "grpc"]), chooser.randrange(len(TEXTS)), chooser.choice(names))
        for _ in range(24)
    ]
    before = _encode_statistics(server)
    calls = [
        lambda p=p, t=t, a=a: embed(server, p, [TEXTS[t]], [a] if a or t % 2 else None)
        for p, t, a in plan
    ]
    results, errors = _concurrently(calls)
    assert not errors, errors
    for index, (_, text, adapter) in enumerate(plan):
        assert_rows_match(results[index], expected, [text], [adapter])
    inferences, executions = (
        a - b for a, b in zip(_encode_statistics(server), before, strict=True)
    )
    assert inferences == len(plan)
    assert executions < len(plan)  # requests were joined: batches held several adapters


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unknown_adapter_is_refused_for_its_own_request_only(server, exported, protocol) -> None:
    _, expected = exported
    legal = next(iter(ADAPTERS))
    calls = [lambda i=i: embed(server, protocol, [TEXTS[0]], [legal]) for i in range(5)]
    calls.insert(2, lambda: embed(server, protocol, [TEXTS[0], TEXTS[1]], [legal, "nope"]))
    results, errors = _concurrently(calls)
    assert set(errors) == {2}
    message = str(errors[2])
    assert isinstance(errors[2], InferenceServerException)
    assert "unknown LoRA adapter 'nope'" in message
    assert all(repr(name) in message for name in ADAPTERS)
    assert len(results) == 5
    for got in results.values():
        assert_rows_match(got, expected, [0], [legal])


def test_the_exported_entry_checks_clean(exported) -> None:
    from shoal.model_repository.repository import check_entry

    repository, _ = exported
    assert check_entry(Path(repository), NAME).problems == []


def test_the_docs_lora_example_runs_against_the_served_entry(server) -> None:
    """docs/lora.md's `lora-call` example, as written but for the server's address."""
    from tests.docs.test_doc_examples import run_example_against

    stdout = run_example_against("lora-call", server.http_address)
    assert stdout.strip() == "(2, 32)"


def test_a_corrupt_adapter_file_fails_the_load_naming_the_adapter(server, exported) -> None:
    """The encode step refuses to load an adapter file onnxruntime cannot read; Triton reports
    the load as failed (the served entry keeps serving)."""
    from shoal.manifest import Manifest

    repository, expected = exported
    manifest = Manifest.read(repository / BROKEN)
    spec = manifest.adapters[0]
    path = repository / f"{BROKEN}__encode" / str(manifest.version) / spec.file
    path.write_bytes(b"not an onnxruntime adapter")
    client = httpclient.InferenceServerClient(server.http_address)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(f"{BROKEN}__encode")
    reported = str(caught.value) + server.log_path.read_text(errors="replace")
    assert f"LoRA adapter {spec.name!r}: {spec.file} cannot be loaded" in reported
    assert not client.is_model_ready(f"{BROKEN}__encode")
    got = embed(server, "http", TEXTS, [spec.name] * len(TEXTS))
    assert_rows_match(got, expected, list(range(len(TEXTS))), [spec.name] * len(TEXTS))
