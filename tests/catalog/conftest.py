"""Fixtures for `shoal build` tests: tiny checkpoints copied per test (tests change them), a real
S3-compatible HTTP server on loopback (moto's ThreadedMotoServer, from the `dev` extra). The real
kube-apiserver with the operator's CRDs is the session's `kube_cluster` (tests/support/kube.py)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    @property
    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 HTTP API (moto's server, werkzeug on a free loopback port)."""
    moto_server = pytest.importorskip(
        "moto.server", reason="the S3 publish tests need moto[server] (the dev extra)"
    )
    pytest.importorskip("s3fs", reason="the S3 publish tests need the `publish` extra")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server: str) -> S3Server:
    """A fresh, empty bucket per test."""
    import s3fs

    bucket = f"shoal-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(bucket)
    return S3Server(s3_server, bucket)


def copy_checkpoint(source: Path, destination: Path) -> Path:
    """A writable copy of a session-built tiny checkpoint."""
    shutil.copytree(source, destination)
    return destination
