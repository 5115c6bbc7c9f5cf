"""`shoal operator run` refuses bad input before kopf starts: one line, exit 2, no traceback.
Run as a person runs it (a subprocess), so that what reaches the terminal is what is checked."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.kube import free_port

SRC = Path(__file__).resolve().parents[2] / "src"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    environment = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    for name in [n for n in environment if n.startswith("SHOAL_OPERATOR_")]:
        environment.pop(name)  # the test session's fast timers are not what a person sets
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", "operator", "run", "-n", "default", *args],
        env=environment, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _refused(result, *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig for an API server that is not there (nothing listens on its port)."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("value", "expected"),
    [("soon", "is not a number of seconds"), ("0", "must be a positive"), ("-3", "positive")],
)
def test_a_drift_interval_that_is_not_a_positive_number_is_refused(value, expected):
    _refused(_run("--drift-interval", value), "--drift-interval", expected)


def test_a_bad_interval_in_the_environment_is_refused_naming_the_variable(kubeconfig):
    result = _run(env={"SHOAL_OPERATOR_RETRY_BASE_S": "fast", "KUBECONFIG": str(kubeconfig)})
    _refused(result, "SHOAL_OPERATOR_RETRY_BASE_S='fast'")


def test_no_kubeconfig_is_refused_saying_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere"
    _refused(_run(env={"KUBECONFIG": str(missing)}), "no kubeconfig", str(missing))


def test_a_busy_metrics_port_is_refused_with_the_fix(kubeconfig):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run("--metrics-port", str(port), env={"KUBECONFIG": str(kubeconfig)})
    _refused(result, f"--metrics-port {port}", "0 to turn metrics off")


def test_an_api_server_that_does_not_answer_is_refused_at_once(kubeconfig):
    result = _run("--metrics-port", "0", env={"KUBECONFIG": str(kubeconfig)}, timeout=30)
    _refused(result, "cannot reach the Kubernetes API at https://127.0.0.1:")
