"""`shoal embed` and `shoal rerank` as a person runs them, against a real `shoal serve` on Triton's
standard ports inside a network namespace (its own localhost, where nothing else listens), with
the commands' default URLs: over HTTP (localhost:8000) and gRPC (localhost:8001), more texts than
the entry's batch size are split and joined in order; a command on the wrong kind of entry says
which command fits; a client's mistake is one line. With nothing listening, the error says what
was tried and what to do: exit code 2, no traceback (tests/runtime/test_client_unreachable.py:
closed ports, silent and garbled servers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.commands import SRC, refused, shoal
from tests.runtime.entries import CLIENT_MAX_BATCH_SIZE, CLIENT_MAX_TEXT_BYTES
from tests.support.netns import NetnsHost, netns_hosts

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

MAX_BATCH_SIZE = CLIENT_MAX_BATCH_SIZE
MAX_TEXT_BYTES = CLIENT_MAX_TEXT_BYTES
TEXTS = [f"text number {i} about fish" for i in range(MAX_BATCH_SIZE * 2 + 1)]
DOCUMENTS = [f"document {i}: fish live in water" for i in range(MAX_BATCH_SIZE + 2)]


def vectors(done: subprocess.CompletedProcess[str], texts: list[str]) -> np.ndarray:
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    return np.array([r["embedding"] for r in rows], dtype=np.float32)


def scores(done: subprocess.CompletedProcess[str]) -> dict[str, float]:
    assert done.returncode == 0, done.stderr
    pairs = (line.split(maxsplit=1) for line in done.stdout.splitlines())
    return {text: float(score) for score, text in pairs}


@pytest.fixture(scope="module")
def repository(client_entries) -> Path:
    return client_entries


@pytest.fixture(scope="module")
def hosts() -> Iterator:
    from tests.support.netns import NetnsUnavailable

    try:
        with netns_hosts() as made:
            yield made
    except NetnsUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def served(repository, hosts, tmp_path_factory) -> Iterator[NetnsHost]:
    """`shoal serve` on 8000 (HTTP) and 8001 (gRPC) of a namespace's localhost."""
    host = hosts.create()
    log_file = tmp_path_factory.mktemp("serve-log") / "triton.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), *sys.path]))
    server = subprocess.Popen(
        ["ip", "netns", "exec", host.name, sys.executable, "-m", "shoal.cli", "serve",
         str(repository), "--http-port", "8000", "--grpc-port", "8001",
         "--log-file", str(log_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        banner, deadline = "", time.monotonic() + 180
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            banner += line
        assert "Ctrl-C" in banner, banner
        yield host
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_more_texts_than_the_batch_size_are_split_and_joined_in_order(served, protocol) -> None:
    def embed(texts: list[str]) -> np.ndarray:
        done = shoal("embed", "embedder", *texts, "--protocol", protocol, namespace=served.name)
        return vectors(done, texts)

    together = embed(TEXTS)
    backwards = embed(TEXTS[::-1])
    np.testing.assert_allclose(together, backwards[::-1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(together[5:6], embed([TEXTS[5]]), rtol=0, atol=1e-5)
    assert not np.allclose(together[0], together[-1])  # different texts, different rows

    ranked = scores(
        shoal("rerank", "reranker", "fish?", *DOCUMENTS, "--protocol", protocol,
              namespace=served.name)
    )  # fmt: skip
    assert sorted(ranked) == sorted(DOCUMENTS)
    alone = scores(shoal("rerank", "reranker", "fish?", DOCUMENTS[-1], namespace=served.name))
    assert abs(ranked[DOCUMENTS[-1]] - alone[DOCUMENTS[-1]]) < 1e-3


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_command_on_the_wrong_kind_of_entry_says_which_command_fits(served, protocol) -> None:
    embedding_a_reranker = shoal(
        "embed", "reranker", "a fish", "--protocol", protocol, namespace=served.name
    )
    refused(
        embedding_a_reranker, "'reranker' serves the rerank task", "shoal rerank reranker QUERY"
    )
    reranking_an_embedder = shoal(
        "rerank", "embedder", "q", "a fish", "--protocol", protocol, namespace=served.name
    )
    refused(reranking_an_embedder, "'embedder' serves the embed task", "shoal embed embedder TEXT")


def test_a_clients_mistake_is_one_line_and_serving_goes_on(served) -> None:
    too_long = "x" * (MAX_TEXT_BYTES + 1)
    for protocol in ("http", "grpc"):
        done = shoal("embed", "embedder", too_long, "--protocol", protocol, namespace=served.name)
        refused(done, f"over the limit of {MAX_TEXT_BYTES} bytes")
    not_utf8 = shoal("embed", "embedder", "caf\udce9", namespace=served.name)
    refused(not_utf8, "TEXT[0] is not valid UTF-8 text")
    vectors(shoal("embed", "embedder", "still serving", namespace=served.name), ["still serving"])


def test_with_nothing_listening_the_default_urls_say_what_was_tried(hosts) -> None:
    empty = hosts.create()  # a localhost where nothing listens
    over_http = refused(
        shoal("embed", "m", "hello", namespace=empty.name),
        "no KServe v2 server answers over HTTP at http://localhost:8000",
        "`shoal serve REPOSITORY`",
        "--url",
    )
    assert "onnection refused" in over_http
    refused(
        shoal("rerank", "m", "q", "doc", "--protocol", "grpc", namespace=empty.name),
        "no KServe v2 server answers over gRPC at localhost:8001",
        "`shoal serve REPOSITORY`",
    )
