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

from tests.support.fixtures import tiny_model  # noqa: E402, F401  (a session fixture)
from tests.support.kube import kube_cluster  # noqa: E402, F401  (a session fixture)
from tests.support.netns import _netns_session, netns_host  # noqa: E402, F401  (fixtures)
