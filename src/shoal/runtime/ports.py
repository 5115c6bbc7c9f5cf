"""The ports `shoal serve` listens on: Triton's standard ones by default, checked free before
anything starts, and, for one that is taken, which process holds it.

Stdlib only: the command line parses ports with `port_number` without loading the runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import socket
from pathlib import Path

# Triton's own defaults (HTTP, gRPC, metrics): what clients, docs and `shoal embed` expect.
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
STANDARD_PORTS = (HTTP_PORT, GRPC_PORT, METRICS_PORT)

_LISTEN = "0A"  # TCP state in /proc/net/tcp
_ROLE_NAMES = {"http": "HTTP", "grpc": "gRPC", "metrics": "metrics"}


class PortTaken(OSError):
    """A port to listen on is held by another socket. `role` is "http", "grpc" or "metrics";
    `holder` says which process holds it, when this user may see it."""

    def __init__(self, role: str, port: int, holder: str | None) -> None:
        self.role = role
        self.port = port
        self.holder = holder
        super().__init__(errno.EADDRINUSE, self.describe())

    def describe(self) -> str:
        by = f" by {self.holder}" if self.holder else ""
        return f"{_ROLE_NAMES.get(self.role, self.role)} port {self.port} is already in use{by}"


def taken_message(taken: PortTaken, option: str) -> str:
    """One line for a person: the port, its holder, and the option that changes it."""
    return (
        f"{taken.describe()}; stop what holds it, or listen on another port with {option} PORT "
        "(0: any free port)"
    )


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def is_free(host: str, port: int) -> bool:
    """Whether a listening socket could bind `host:port` now (0 is always free)."""
    if port == 0:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose last connections are in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def check_free(host: str, ports: dict[str, int]) -> None:
    """Raise PortTaken for the first of `ports` (role -> port) that another socket holds."""
    for role, port in ports.items():
        if not is_free(host, port):
            raise PortTaken(role, port, port_holder(port))


def port_holder(port: int) -> str | None:
    """ "pid N (command line)" of a process listening on TCP `port`, or None when it cannot be
    told (another user's process, or no /proc)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    proc = Path("/proc")
    for pid_dir in proc.iterdir() if proc.is_dir() else ():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone, or not ours to read
            for fd in (pid_dir / "fd").iterdir():
                if _socket_inode(fd) in inodes:
                    return f"pid {pid_dir.name} ({_command_line(pid_dir)})"
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == _LISTEN:
                    inodes.add(fields[9])
    return inodes


def _socket_inode(fd: Path) -> str | None:
    try:
        target = fd.readlink().name
    except OSError:
        return None
    return target[len("socket:[") : -1] if target.startswith("socket:[") else None


def _command_line(pid_dir: Path, limit: int = 80) -> str:
    try:
        words = (pid_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return text if len(text) <= limit else text[: limit - 3] + "..."
