"""`shoal serve` as a process: serves what fits, `shoal embed` gets vectors, an unknown model gets
a clear error while serving goes on, and SIGTERM stops everything (no stubs, no shm left)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.runtime.triton import stub_pids_with_prefix
from tests.runtime.entries import export_tiny_embedders
from tests.support.triton import SERVE_ON_FREE_PORTS

SHOAL = str(Path(sys.executable).parent / "shoal")  # the console script

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]


def shoal(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SHOAL, *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_serve_embed_and_sigterm(tmp_path, tiny_model):
    repository = tmp_path / "repository"
    export_tiny_embedders(tiny_model("bert"), repository, ["tiny"])
    log_file = tmp_path / "triton.log"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal.cli",
            "serve",
            str(repository),
            "--memory-budget",
            "1GiB",
            "--log-file",
            str(log_file),
            *SERVE_ON_FREE_PORTS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 120
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            banner += line
        assert "loaded: tiny" in banner, banner
        url = re.search(r"HTTP (http://\S+)", banner).group(1)

        done = shoal("embed", "tiny", "hello fish", "second text", "--url", url)
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["text"] for r in rows] == ["hello fish", "second text"]
        assert len(rows[0]["embedding"]) == 32

        missing = shoal("embed", "nope", "x", "--url", url)
        assert missing.returncode == 2, missing.stderr
        # The router in front names the unknown model and what it serves.
        assert "'nope' is not served here" in missing.stderr and "tiny" in missing.stderr
        assert shoal("embed", "tiny", "still serving", "--url", url).returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    prefix = re.search(r"stub shm prefix (\S+)\)", banner).group(1)
    assert stub_pids_with_prefix(prefix) == []
    assert list(Path("/dev/shm").glob(f"{prefix}*")) == []


def test_serve_names_a_missing_repository(tmp_path):
    done = shoal("serve", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "nothing" in done.stderr and "does not exist" in done.stderr


def test_serve_rejects_an_unreadable_budget(tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    done = shoal("serve", str(repository), "--memory-budget", "lots")
    assert done.returncode == 2 and "e.g. 2GiB" in done.stderr
