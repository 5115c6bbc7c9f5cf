"""A watch on the machine's memory while the suite runs, so that a runaway process shows up as a
report naming it and the test that was running, not as the whole CI run SIGKILLed by the kernel
with nothing said (a CI run once ended "Killed" at 79 % on a 24 GiB machine; locally the suite
peaks near 3.5 GiB).

Every CHECK_INTERVAL_S a daemon thread reads /proc/meminfo. When available memory falls under
LOW_FRACTION of the total, it prints (to the real stderr, once per test) the running test and the
largest processes. If the largest is a process the suite started (a descendant of pytest: a
tritonserver, an operator, an apiserver) and holds more than RUNAWAY_BYTES, it is killed: that
test fails with its server gone, and the rest of the run goes on. Linux only; elsewhere it does
nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

CHECK_INTERVAL_S = 2.0
LOW_FRACTION = 0.15
RUNAWAY_BYTES = 6 * 2**30


def _meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) * 1024
    return fields


def _processes() -> list[tuple[int, int, int, str]]:
    """(rss bytes, pid, parent pid, command line) of every process that can be read."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(values.get("VmRSS", "0 kB").split()[0]) * 1024
        found.append((rss, int(entry.name), int(values["PPid"].split()[0]), command.strip()))
    return sorted(found, reverse=True)


def _descends_from(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid > 1:
        pid = parents.get(pid, 0)
        if pid == ancestor:
            return True
    return False


class MemoryGuard:
    def __init__(self) -> None:
        self.current_test = "(between tests)"
        self._reported_for = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-guard", daemon=True)

    def start(self) -> None:
        if Path("/proc/meminfo").exists():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL_S):
            try:
                self._check()
            except Exception as exc:  # noqa: BLE001  (a guard must never break the run)
                print(f"memory guard: {exc!r}", file=sys.__stderr__)

    def _check(self) -> None:
        info = _meminfo()
        available, total = info["MemAvailable"], info["MemTotal"]
        if available >= LOW_FRACTION * total or self._reported_for == self.current_test:
            return
        self._reported_for = self.current_test
        processes = _processes()
        lines = [
            f"memory guard: {available / 2**30:.1f} of {total / 2**30:.1f} GiB available "
            f"during {self.current_test}; largest processes:"
        ]
        lines += [
            f"  {rss / 2**20:8.0f} MiB  {pid:7d}  {cmd[:160]}" for rss, pid, _, cmd in processes[:8]
        ]
        rss, pid, _, command = processes[0]
        parents = {p: parent for _, p, parent, _ in processes}
        if rss > RUNAWAY_BYTES and _descends_from(pid, os.getpid(), parents):
            os.kill(pid, signal.SIGKILL)
            lines.append(f"memory guard: killed {pid} ({command[:80]}): {rss / 2**30:.1f} GiB")
        print("\n".join(lines), file=sys.__stderr__, flush=True)
