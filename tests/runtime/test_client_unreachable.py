"""`shoal embed` where no KServe v2 server answers: a closed port, a server that accepts and never
answers, one that answers 404 to everything, one that sends garbage. Each ends in one line that
names the URL tried, why it failed, and what to do (`shoal serve`, or --url); exit code 2, no
traceback, and no longer than the liveness probe's deadline."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shoal.runtime.client import LIVENESS_TIMEOUT_S
from shoal.runtime.triton import free_port
from tests.runtime.commands import refused, shoal

NAMES = {"http": "HTTP", "grpc": "gRPC"}


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"nothing here")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose connections the kernel accepts but nobody ever reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def not_found_port() -> Iterator[int]:
    """An HTTP server that answers 404 to every path."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def garbage_port() -> Iterator[int]:
    """A server that answers every connection with bytes that are neither HTTP nor HTTP/2."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def answer() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed at teardown
                return
            with connection:
                connection.sendall(b"\x00\xffnot a protocol\r\n\r\n" * 8)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()


def embed_at(port: int, protocol: str) -> tuple[str, str]:
    url = f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}"
    started = time.monotonic()
    done = shoal("embed", "m", "hello", "--url", url, "--protocol", protocol)
    # The probe's deadline, plus the start of a Python process that imports tritonclient.
    assert time.monotonic() - started < LIVENESS_TIMEOUT_S + 30, done.stderr
    line = refused(
        done,
        f"no KServe v2 server answers over {NAMES[protocol]} at {url}: ",
        "`shoal serve REPOSITORY`",
        "--url",
    )
    return url, line


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_closed_port_is_named_in_one_line(protocol) -> None:
    _, line = embed_at(free_port(), protocol)
    assert "refused" in line.lower() or "failed to connect" in line


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_never_answers_is_given_up_after_the_probe_deadline(
    silent_port, protocol
) -> None:
    _, line = embed_at(silent_port, protocol)
    assert f"no answer within {LIVENESS_TIMEOUT_S:.0f} s" in line


def test_a_server_that_is_not_kserve_is_named_as_such(not_found_port) -> None:
    _, line = embed_at(not_found_port, "http")
    assert "it answered, but not as a live KServe v2 server" in line
    _, line = embed_at(not_found_port, "grpc")  # an HTTP/1 server on a gRPC call
    assert "HTTP/2" in line


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_answers_garbage_is_named_in_one_line(garbage_port, protocol) -> None:
    _, line = embed_at(garbage_port, protocol)
    assert ("its answer is not HTTP" if protocol == "http" else "HTTP/2") in line
