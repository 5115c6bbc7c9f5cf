"""The suite's memory guard (tests/support/memory_guard.py): under memory pressure it names the
running test and the largest processes, and kills a runaway process the suite started, never one
it did not start."""

from __future__ import annotations

import os
import subprocess

from tests.support import memory_guard
from tests.support.memory_guard import MemoryGuard

GiB = 2**30


def _pressure(monkeypatch, processes) -> None:
    monkeypatch.setattr(
        memory_guard, "_meminfo", lambda: {"MemAvailable": 1 * GiB, "MemTotal": 24 * GiB}
    )
    monkeypatch.setattr(memory_guard, "_processes", lambda: processes)


def test_a_runaway_child_is_killed_and_reported(monkeypatch, capfd):
    child = subprocess.Popen(["sleep", "60"])
    try:
        _pressure(monkeypatch, [(10 * GiB, child.pid, os.getpid(), "tritonserver --x")])
        guard = MemoryGuard()
        guard.current_test = "tests/x.py::test_y"
        guard._check()
        assert child.wait(timeout=10) == -9
        report = capfd.readouterr().err
        assert "during tests/x.py::test_y" in report and "killed" in report
        guard._check()  # once per test
        assert capfd.readouterr().err == ""
    finally:
        child.kill()


def test_a_process_the_suite_did_not_start_is_only_reported(monkeypatch, capfd):
    outsider = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # Its parent is said to be init: not a descendant of this test run.
        _pressure(monkeypatch, [(10 * GiB, outsider.pid, 1, "something else")])
        MemoryGuard()._check()
        assert outsider.poll() is None
        assert "killed" not in capfd.readouterr().err
    finally:
        outsider.kill()
