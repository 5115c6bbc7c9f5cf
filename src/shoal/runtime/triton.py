"""One local `tritonserver` process: start on free loopback ports, wait until ready, stop cleanly.

Used by `shoal serve`, `shoal quickstart`, the benchmarks, the tests (tests/support/triton.py) and
the operator's e2e tests. The server runs in explicit model-control mode, in its own process group,
with its stdout/stderr in a log file whose tail is shown when it fails. On a host without an
NVIDIA driver, what is shown leaves out the CUDA lines this CUDA-built Triton prints there on every
start and model load (they are not why a CPU server failed); the file keeps everything.

Clean shutdown matters because every python-backend model instance is a separate
`triton_python_backend_stub` process with a /dev/shm segment: stop() sends SIGTERM (Triton unloads
its models and stops the stubs), waits, then SIGKILLs whatever is left of the process group and
removes the shared-memory segments carrying this server's unique prefix.

With `network_namespace`, the server runs under `ip netns exec` in that (existing) network
namespace and listens on `bind_address` there, on Triton's standard ports 8000/8001/8002 unless
others are given: a pod-like replica for the operator's tests (tests/support/netns.py). `ip netns
exec` replaces itself with tritonserver, so the process, its group and its stubs are the same as
without a namespace, and /dev/shm is shared with the root namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

import httpx

from shoal.contract import TRITON_SERVING_FLAGS
from shoal.runtime.installation import STUB_NAME, TritonInstallation, locate_triton
from shoal.runtime.ports import STANDARD_PORTS

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SHM_DIR = Path("/dev/shm")
NVIDIA_DRIVER_DEVICE = Path("/dev/nvidiactl")  # present where an NVIDIA driver is loaded
# What Triton 2.51 logs on a host without a GPU: at start (pinned memory, the CUDA memory pool,
# "E... CudaDriverHelper") and per ensemble ("unable to create stream for M: CUDA driver...").
CUDA_UNAVAILABLE = re.compile(
    r"CUDA driver version is insufficient|CudaDriverHelper has not been initialized|"
    r"CUDA memory pool disabled"
)


class TritonStartError(RuntimeError):
    """The server exited or did not become ready; the message carries the tail of its log."""


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port on `address` (loopback by default) that is free right now (the kernel picks it)."""
    return free_ports(1, address)[0]


def free_ports(count: int, address: str = LOOPBACK) -> list[int]:
    """`count` different free ports: each stays bound until all are picked (ports picked one at a
    time may repeat, and Triton refuses to start with its HTTP and metrics ports equal)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((address, 0))
            ports.append(sock.getsockname()[1])
        return ports


class TritonServer:
    """A `tritonserver` process in explicit model-control mode on loopback (or `bind_address`).

    >>> with TritonServer(repository, load_models=["minilm"]) as server:
    ...     client = tritonclient.http.InferenceServerClient(server.http_address)

    Ports left as None are picked free at start (in a `network_namespace`: 8000/8001/8002).
    `load_models` are loaded before the server reports ready; `load_all=True` loads everything in
    the repository instead. `bind_address` is one address (the urls use it), never a wildcard.
    """

    def __init__(
        self,
        repository: Path | str,
        *,
        load_models: Iterable[str] = (),
        load_all: bool = False,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: Path | str | None = None,
        startup_timeout_s: float = 120.0,
        exit_timeout_s: int = 5,
        extra_args: Sequence[str] = (),
        installation: TritonInstallation | None = None,
        bind_address: str = LOOPBACK,
        network_namespace: str | None = None,
    ) -> None:
        if ipaddress.ip_address(bind_address).is_unspecified:
            raise ValueError(
                f"bind_address {bind_address!r} is a wildcard: give the one address clients "
                "use (127.0.0.1, or the network namespace's own address)"
            )
        self.repository = Path(repository).resolve()
        self.bind_address = bind_address
        self.network_namespace = network_namespace
        self.load_models = list(load_models)
        self.load_all = load_all
        if network_namespace is not None:
            # A fresh namespace is like a pod: nothing else listens there.
            http_port, grpc_port, metrics_port = (
                requested or standard
                for requested, standard in zip(
                    (http_port, grpc_port, metrics_port), STANDARD_PORTS, strict=True
                )
            )
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._log_path_given = Path(log_path) if log_path else None
        # A log in the temp folder (none given) is removed at stop; restarts keep appending to it.
        self._temporary_log = log_path is None
        self.log_path: Path | None = None
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = list(extra_args)
        self._installation = installation
        # Names this server's stub shared-memory segments (and appears in the stubs' argv), so that
        # cleanup touches only what this server made.
        self.shm_prefix = f"shoal_{uuid.uuid4().hex[:12]}_"
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    # -- addresses ------------------------------------------------------------------------------
    @property
    def http_address(self) -> str:
        """host:port, what tritonclient.http wants."""
        return f"{self.bind_address}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """host:port, what tritonclient.grpc wants."""
        return f"{self.bind_address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.grpc_address}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.bind_address}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> TritonServer:
        if self.is_running():
            return self
        if not self.repository.is_dir():
            raise TritonStartError(f"model repository {self.repository} is not a directory")
        installation = self._installation or locate_triton()
        # A port picked free may be taken before Triton binds it: retry with fresh ports then.
        auto_ports = None in self._requested_ports
        attempts = 3 if auto_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._launch(installation)
                self._wait_until_ready()
                return self
            except TritonStartError as exc:
                self.stop()
                if attempt < attempts and "already in use" in str(exc).lower():
                    log.warning("port taken before Triton bound it; retrying with new ports")
                    continue
                raise
        raise AssertionError("unreachable")

    def restart(self) -> TritonServer:
        """Start again after the process died (or stop it first), on the same ports and log
        file, so that clients and the control loop keep their addresses."""
        self._stop(remove_log=False)
        self._requested_ports = (self.http_port, self.grpc_port, self.metrics_port)
        if self.log_path is not None:
            self._log_path_given = self.log_path
        return self.start()

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def _launch(self, installation: TritonInstallation) -> None:
        picked = iter(free_ports(sum(not p for p in self._requested_ports), self.bind_address))
        http, grpc, metrics = (p or next(picked) for p in self._requested_ports)
        self.http_port, self.grpc_port, self.metrics_port = http, grpc, metrics
        if self._log_path_given:
            self.log_path = self._log_path_given
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        command = [
            *self._namespace_prefix(),
            str(installation.binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={installation.backend_directory}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--http-address={self.bind_address}",
            f"--http-port={http}",
            f"--grpc-address={self.bind_address}",
            f"--grpc-port={grpc}",
            f"--metrics-address={self.bind_address}",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--log-verbose=0",
            *TRITON_SERVING_FLAGS,
            *(["--load-model=*"] if self.load_all else []),
            *(f"--load-model={name}" for name in self.load_models),
            *self.extra_args,
        ]
        log.info(
            "starting tritonserver on %s (log: %s, stub shm prefix %s)",
            self.http_url,
            self.log_path,
            self.shm_prefix,
        )
        log.debug("command: %s", command)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._environment(installation),
                # Own process group: Ctrl-C in a terminal reaches only us (we stop the server in
                # order), and stop() can kill every stub the server started.
                start_new_session=True,
            )
        # Runs at interpreter exit too: a server its caller never stopped does not outlive us.
        self._finalizer = weakref.finalize(
            self, _kill_group_and_shm, self._process, self.shm_prefix
        )

    def _namespace_prefix(self) -> list[str]:
        if self.network_namespace is None:
            return []
        ip = shutil.which("ip")
        if ip is None:
            raise TritonStartError(
                f"network namespace {self.network_namespace!r} asked for, but the `ip` command "
                "is missing: install iproute2"
            )
        # `ip netns exec` execs the command: the Popen pid is tritonserver itself.
        return [ip, "netns", "exec", self.network_namespace]

    def _environment(self, installation: TritonInstallation) -> dict[str, str]:
        env = dict(os.environ)
        # The python steps' embedded interpreter finds numpy/tokenizers/onnxruntime through the
        # first python on PATH (PYTHONPATH is ignored by the stub): put this environment first.
        env["PATH"] = f"{installation.python_env / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        if installation.library_path:
            prior = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = (
                f"{prior}{os.pathsep}{installation.library_path}"
                if prior
                else str(installation.library_path)
            )
        return env

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        # trust_env=False: a proxy from the environment must not stand between us and the server.
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise TritonStartError(
                        f"tritonserver exited with code {code} during startup.\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.http_url}/v2/health/ready").status_code == 200:
                        log.info("tritonserver ready on %s (pid %d)", self.http_url, self.pid)
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TritonStartError(
                        f"tritonserver not ready after {self.startup_timeout_s:.0f}s.\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server and everything it started, its temporary log included (a log file the
        caller named stays). Returns its exit code (None if never run).

        Safe to call twice, and from a signal handler's aftermath."""
        return self._stop(timeout_s, remove_log=True)

    def _stop(self, timeout_s: float | None = None, *, remove_log: bool) -> int | None:
        process = self._process
        if process is None:
            return None
        wait_s = timeout_s if timeout_s is not None else self.exit_timeout_s + 10
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not exit %.0fs after SIGTERM: killing it", wait_s)
        _kill_group_and_shm(process, self.shm_prefix)
        if self._finalizer is not None:
            self._finalizer.detach()
        log.info("tritonserver stopped (exit code %s)", process.returncode)
        if remove_log and self._temporary_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        return process.returncode

    # -- diagnostics ----------------------------------------------------------------------------
    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def readable_log(self) -> str:
        """The log as a person should read it: on a host without an NVIDIA driver, without the
        CUDA-unavailable lines (on a GPU host they may be the very problem, so they stay)."""
        text = self.log_text()
        if NVIDIA_DRIVER_DEVICE.exists():
            return text
        return "\n".join(line for line in text.splitlines() if not CUDA_UNAVAILABLE.search(line))

    def log_tail(self, lines: int = 40) -> str:
        tail = self.readable_log().splitlines()[-lines:]
        where = f" ({self.log_path})" if self.log_path else ""
        return f"--- last {len(tail)} lines of the tritonserver log{where} ---\n" + "\n".join(tail)

    def stub_pids(self) -> list[int]:
        """Python-backend stub processes of this server that are alive (found by shm prefix)."""
        return stub_pids_with_prefix(self.shm_prefix)

    def shm_segments(self) -> list[Path]:
        """Shared-memory segments of this server's stubs that exist."""
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*")) if SHM_DIR.is_dir() else []


def stub_pids_with_prefix(shm_prefix: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(STUB_NAME.encode())
            and any(shm_prefix.encode() in arg for arg in argv)
        ):
            pids.append(int(proc.name))
    return pids


def _kill_group_and_shm(process: subprocess.Popen[bytes], shm_prefix: str) -> None:
    """Last resort after SIGTERM: kill what is left of the server's process group (orphaned stubs
    included) and remove its shared-memory segments. Also runs at interpreter exit for servers
    that were never stopped."""
    if process.poll() is None:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    # Stubs that left the group (they do not, but be sure): matched by their shm prefix argument.
    for pid in stub_pids_with_prefix(shm_prefix):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while stub_pids_with_prefix(shm_prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    if SHM_DIR.is_dir():
        for segment in SHM_DIR.glob(f"{shm_prefix}*"):
            segment.unlink(missing_ok=True)
