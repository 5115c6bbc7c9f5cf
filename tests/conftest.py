"""Puts the repository root on sys.path (so tests import `tests.support...`) and registers the
shared session fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Fast operator timers for the tests. shoal.operator.settings reads them once, at its first
# import, which may come from any test module (tests/helm imports shoal.operator.resources at
# collection): set here, before every test module, or the operator tests of a full run would get
# the 30 s drift timer instead of 2 s.
os.environ.setdefault("SHOAL_OPERATOR_DRIFT_INTERVAL_S", "2")
os.environ.setdefault("SHOAL_OPERATOR_POOL_STATUS_INTERVAL_S", "1")
os.environ.setdefault("SHOAL_OPERATOR_RETRY_BASE_S", "1")
os.environ.setdefault("SHOAL_OPERATOR_RETRY_MAX_S", "4")
os.environ.setdefault("SHOAL_OPERATOR_UNLOAD_DEADLINE_S", "5")

from tests.support.fixtures import client_entries, tiny_model  # noqa: E402, F401  (fixtures)
from tests.support.kube import kube_cluster  # noqa: E402, F401  (a session fixture)
from tests.support.memory_guard import MemoryGuard  # noqa: E402
from tests.support.netns import _netns_session, netns_host  # noqa: E402, F401  (fixtures)

_memory_guard = MemoryGuard()


def pytest_sessionstart(session) -> None:  # noqa: ANN001
    _memory_guard.start()


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001
    _memory_guard.stop()


def pytest_runtest_logstart(nodeid: str, location) -> None:  # noqa: ANN001
    _memory_guard.current_test = nodeid
