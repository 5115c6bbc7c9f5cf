"""Test hosts in network namespaces: one per test replica, reached from the test process over a veth
pair, the way the operator reaches pods by their IPs on a real cluster.

Test traffic stays on this machine: each host is a network namespace (`shoal-<pid>-<n>`) joined to
the root namespace by a veth pair with a /30 from the benchmarking range 198.18.0.0/15 (RFC 2544):
198.18.N.1 on the host side, 198.18.N.2 inside, on the namespace's `eth0` (with `lo` up, and no
default route: nothing inside reaches further than the test process). A server started under
`ip netns exec` listens there on the standard ports, exactly like a pod.

    def test_replica(netns_host):
        host = netns_host()                     # a fresh namespace, deleted at teardown
        TritonServer(repo, network_namespace=host.name, bind_address=host.address)

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2: without them the fixture fails with a
message saying so, never skips. Namespaces left behind by a crashed run (their pid is gone) are
deleted when a session first asks for one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

NAMESPACE_PREFIX = "shoal-"
# Interface names are limited to 15 characters: "shv<pid>n<n>" fits any pid up to 7 digits.
VETH_PREFIX = "shv"
_NAMESPACE_NAME = re.compile(r"^shoal-(\d+)-(\d+)$")
_VETH_NAME = re.compile(r"^shv(\d+)n(\d+)$")
# Serializes picking a free /30 among concurrent test sessions on this machine.
_LOCK_PATH = Path("/run/lock/shoal-netns.lock")
_SUBNETS = 256  # 198.18.0.0/30 ... 198.18.255.0/30


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says why and what to do."""


@dataclass(frozen=True)
class NetnsHost:
    """A test host: a network namespace and its address, as a pod and its pod IP."""

    name: str  # the network namespace, for `ip netns exec`
    address: str  # 198.18.N.2, inside the namespace
    gateway: str  # 198.18.N.1, the root namespace's end of the veth
    host_veth: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        command = " ".join(["ip", *args])
        raise NetnsUnavailable(f"`{command}` failed: {result.stderr.strip()}")
    return result


def check_netns_available() -> None:
    """Raise NetnsUnavailable unless this process can make network namespaces."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command is missing: install Debian's iproute2 package")
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "the operator's e2e tests run each Triton replica in its own network namespace "
            "(`ip netns add`), which needs root: run the tests as root (CI does)"
        )


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_leftovers() -> list[str]:
    """Delete namespaces and host veths of earlier runs whose process is gone. Those of live
    processes (another test session running now) are left alone. Returns what was removed."""
    removed = []
    namespaces = _ip("netns", "list", check=False).stdout.split("\n")
    for line in namespaces:
        name = line.split(" ", 1)[0]
        match = _NAMESPACE_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0] if ":" in line else ""
        match = _VETH_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("link", "delete", name, check=False)
            removed.append(name)
    if removed:
        log.info("removed network namespaces and veths left by earlier runs: %s", removed)
    return removed


def _used_subnets() -> set[int]:
    """Third octets of the 198.18.N.x addresses configured in the root namespace now."""
    used = set()
    for match in re.finditer(r"inet 198\.18\.(\d+)\.\d+/", _ip("-o", "-4", "addr").stdout):
        used.add(int(match.group(1)))
    return used


class NetnsHosts:
    """Makes test hosts for this process and deletes every one of them on close()."""

    def __init__(self) -> None:
        self._count = 0
        self._hosts: list[NetnsHost] = []

    def create(self) -> NetnsHost:
        check_netns_available()
        pid = os.getpid()
        index = self._count
        self._count += 1
        name = f"{NAMESPACE_PREFIX}{pid}-{index}"
        veth = f"{VETH_PREFIX}{pid}n{index}"
        _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        with open(_LOCK_PATH, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            used = _used_subnets()
            # Start from a pid-dependent subnet so that concurrent sessions rarely probe the same.
            free = [
                (pid + i) % _SUBNETS for i in range(_SUBNETS) if (pid + i) % _SUBNETS not in used
            ]
            if not free:
                raise NetnsUnavailable("all 256 test subnets of 198.18.0.0/16 are in use")
            subnet = free[0]
            host = NetnsHost(
                name=name,
                address=f"198.18.{subnet}.2",
                gateway=f"198.18.{subnet}.1",
                host_veth=veth,
            )
            self._hosts.append(host)  # before creating: a half-made host is still deleted
            try:
                _ip("netns", "add", name)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
                _ip("addr", "add", f"{host.gateway}/30", "dev", veth)
            except NetnsUnavailable as exc:
                self._delete(host)
                raise NetnsUnavailable(
                    f"{exc}; network namespaces need root with CAP_SYS_ADMIN and CAP_NET_ADMIN "
                    "(in a container: --privileged or those capabilities)"
                ) from None
        try:
            _ip("link", "set", veth, "up")
            _ip("-n", name, "addr", "add", f"{host.address}/30", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        except NetnsUnavailable:
            self._delete(host)
            raise
        log.info("test host %s at %s (veth %s)", name, host.address, veth)
        return host

    @staticmethod
    def _delete(host: NetnsHost) -> None:
        # Deleting either end removes the pair; the namespace's own removal is asynchronous, so
        # the host end is deleted explicitly. Missing pieces are fine (half-made host).
        _ip("netns", "delete", host.name, check=False)
        _ip("link", "delete", host.host_veth, check=False)

    def close(self) -> None:
        while self._hosts:
            self._delete(self._hosts.pop())


@contextlib.contextmanager
def netns_hosts() -> Iterator[NetnsHosts]:
    """Outside pytest (benchmarks): `with netns_hosts() as hosts: host = hosts.create()`."""
    check_netns_available()
    remove_leftovers()
    hosts = NetnsHosts()
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="session")
def _netns_session() -> None:
    """Checks once per session that namespaces can be made, and removes crashed runs' leftovers."""
    try:
        check_netns_available()
        remove_leftovers()
    except NetnsUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture
def netns_host(_netns_session: None) -> Iterator[Callable[[], NetnsHost]]:
    """Factory: `netns_host()` makes a test host; all of them are deleted at teardown."""
    hosts = NetnsHosts()

    def create() -> NetnsHost:
        try:
            return hosts.create()
        except NetnsUnavailable as exc:
            pytest.fail(str(exc))

    try:
        yield create
    finally:
        hosts.close()
