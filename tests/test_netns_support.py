"""tests/support/netns.py: test hosts are reachable over their veth only, are deleted after use,
and a crashed run's leftovers are removed without touching a live session's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.support.netns import (
    NetnsHosts,
    NetnsUnavailable,
    check_netns_available,
    remove_leftovers,
)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split(" ", 1)[0] for line in out.splitlines()}


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def test_a_host_serves_on_its_address_from_its_namespace_and_is_deleted_after(netns_host):
    host = netns_host()
    assert host.address.startswith("198.18.") and host.address.endswith(".2")
    script = (
        f"import socket; s = socket.create_server(({host.address!r}, 8000)); "
        "print('up', flush=True); c, _ = s.accept(); c.sendall(b'pod')"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", host.name, sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "up"
        with socket.create_connection((host.address, 8000), timeout=5) as connection:
            assert connection.recv(3) == b"pod"
    finally:
        server.kill()
        server.wait()
    assert host.name in _namespaces() and _link_exists(host.host_veth)


def test_close_deletes_the_namespaces_and_veths():
    hosts = NetnsHosts()
    made = [hosts.create(), hosts.create()]
    assert made[0].address != made[1].address
    hosts.close()
    for host in made:
        assert host.name not in _namespaces()
        assert not _link_exists(host.host_veth)


def test_leftovers_of_a_dead_run_are_removed_and_a_live_sessions_kept(netns_host):
    live = netns_host()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names the crashed run
    name, veth = f"shoal-{dead.pid}-0", f"shv{dead.pid}n0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "link", "add", f"shv{dead.pid}n1", "type", "veth", "peer", "name", veth],
                   check=True)  # fmt: skip
    try:
        removed = remove_leftovers()
        assert name in removed
        assert name not in _namespaces()
        assert not _link_exists(veth)
        assert live.name in _namespaces() and _link_exists(live.host_veth)
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        subprocess.run(["ip", "link", "delete", veth], capture_output=True)


def test_without_root_the_check_says_what_is_needed(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsUnavailable, match="needs root"):
        check_netns_available()
