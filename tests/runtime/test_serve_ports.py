"""`shoal serve`'s ports: Triton's standard ones by default (what `--help` says and the parser
gives), and a port that another socket holds ends `shoal serve` at once with one line naming the
port, its holder and the option to change, with no tritonserver left behind; also when the port is
taken between the check and the bind (a real Triton and a real router, in process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.cli import build_parser
from shoal.contract import Task
from shoal.router.settings import RouterSettings
from shoal.runtime import serve as serve_module
from shoal.runtime.ports import PortTaken, is_free
from shoal.runtime.serve import LocalServing
from shoal.runtime.triton import LOOPBACK, free_port, free_ports
from tests.model_repository.sample_manifests import sample_manifest

ROOT = Path(__file__).parents[2]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository with one readable entry: enough for Triton to start (explicit mode)."""
    path = tmp_path / "repository"
    (path / "fish").mkdir(parents=True)
    (path / "fish" / "shoal.json").write_text(sample_manifest(Task.EMBED, name="fish").to_json())
    return path


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A loopback port another socket listens on (as a running server would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        yield holder.getsockname()[1]


def tritonservers_serving(repository: Path) -> list[int]:
    """Pids of tritonserver processes serving `repository` (other tests' servers are not)."""
    flag = f"--model-repository={repository.resolve()}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"tritonserver") and flag in argv:
                    pids.append(int(proc.name))
    return pids


def shoal_serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", "serve", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_serve_listens_on_tritons_standard_ports_by_default():
    args = build_parser().parse_args(["serve", "models"])
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert not args.no_router
    chosen = build_parser().parse_args(["serve", "models", "--http-port", "0", "--grpc-port", "9"])
    assert (chosen.http_port, chosen.grpc_port) == (0, 9)


def test_serve_help_names_the_default_ports_and_that_0_picks_a_free_one():
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for option, port in (("--http-port", 8000), ("--grpc-port", 8001), ("--metrics-port", 8002)):
        after = text.split(f"{option} PORT ", 1)[1]
        described = after[: after.index("(default:")]  # this option's help, up to its default
        assert after[len(described) :].startswith(f"(default: {port})"), after
        assert "0: any free port" in described, described


@pytest.mark.triton
@pytest.mark.parametrize(
    "option, extra",
    [
        ("--http-port", ()),
        ("--grpc-port", ()),
        ("--metrics-port", ()),
        ("--http-port", ("--no-router",)),
        ("--metrics-port", ("--no-router",)),
    ],
)
def test_a_taken_port_ends_serve_at_once_naming_port_holder_and_option(repository, option, extra):
    others = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0"}
    with held_port() as port:
        others[option] = str(port)
        done = shoal_serve(str(repository), *extra, *(a for pair in others.items() for a in pair))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # nothing started, nothing else said
    assert f"port {port} is already in use by pid {os.getpid()} (" in lines[0]
    assert f"with {option} PORT (0: any free port)" in lines[0]
    assert tritonservers_serving(repository) == []


@pytest.mark.triton
@pytest.mark.parametrize("router", [True, False], ids=["router", "no-router"])
async def test_a_port_taken_between_the_check_and_the_bind_is_named_and_nothing_is_left(
    repository, monkeypatch, router
):
    """Another process binds the gRPC port after the check: the bind fails (in the router's gRPC
    server, or in Triton), and serving stops what it started and names the port."""
    checks = []
    real_check = serve_module.check_free

    def check_after_the_first(host: str, ports: dict[str, int]) -> None:
        checks.append(ports)
        if len(checks) > 1:  # the first check passes: the port is taken "after" it
            real_check(host, ports)

    monkeypatch.setattr(serve_module, "check_free", check_after_the_first)
    http_port = free_port()  # bound by the server under test, then released
    with held_port() as port:
        if router:
            settings = RouterSettings(
                host=LOOPBACK, http_port=http_port, grpc_port=port, metrics_port=0
            )
            serving = LocalServing(repository, router=settings)
        else:
            serving = LocalServing(repository, http_port=http_port, grpc_port=port)
        with pytest.raises(PortTaken) as taken:
            await asyncio.wait_for(serving.start(), 60)
    assert (taken.value.role, taken.value.port) == ("grpc", port)
    assert (taken.value.holder or "").startswith(f"pid {os.getpid()} (")
    assert serving.server is not None and not serving.server.is_running()
    assert tritonservers_serving(repository) == []
    assert is_free(LOOPBACK, http_port), "the HTTP port bound before the failure was released"


@pytest.mark.triton
async def test_ports_given_as_0_are_picked_reported_and_released_at_stop(repository):
    settings = RouterSettings(host=LOOPBACK, http_port=0, grpc_port=0, metrics_port=0)
    serving = LocalServing(repository, router=settings)
    await asyncio.wait_for(serving.start(), 60)
    try:
        router = serving.router
        ports = (router.http_port, router.grpc_port, router.metrics_port)
        assert all(ports), ports
        metrics = await asyncio.to_thread(
            httpx.get, f"http://{LOOPBACK}:{router.metrics_port}/metrics", timeout=10
        )
        assert "shoal_router" in metrics.text
    finally:
        await serving.stop()
    assert all(is_free(LOOPBACK, port) for port in ports), "a port outlived the server"


def test_ports_picked_together_are_all_different() -> None:
    # Picked one at a time, two of Triton's three ports could be the same port, and Triton
    # then refuses to start; picked together, each stays bound until all are chosen.
    ports = free_ports(64)
    assert len(set(ports)) == 64
    assert all(0 < port < 65536 for port in ports)
