"""Running `shoal` commands as a person does, for the client commands' tests: a fresh process
(inside a network namespace when asked), this checkout's sources first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def shoal(*args: str, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
    """`shoal ARGS` in a fresh process (inside `namespace` when given), this checkout first."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), *sys.path]))
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    command = [*prefix, sys.executable, "-m", "shoal.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one-line error of a command that failed on its input."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], done.stderr
    return lines[0]
