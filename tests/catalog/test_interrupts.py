"""`shoal build` stopped by SIGTERM (as CI cancels a job) in the middle of an export: the workers
unwind as on Ctrl-C, no staging folder is left, and the repository holds the previous entry whole
(or nothing, for a first build). Real processes: the build, its spawned worker, a tiny export."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.manifest import Manifest
from shoal.model_repository.repository import check_repository
from tests.catalog.conftest import copy_checkpoint
from tests.support.kube import wait_for

pytestmark = pytest.mark.slow

CATALOG = """\
defaults: {runtime: portable, pool: cpu, max_length: 32, max_batch_size: 4}
models:
  - name: alpha
    source: alpha
"""


def _build(root: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", "build", str(root / "catalog.yaml"),
         "--repository", str(root / "repo"), "--manifests", str(root / "out"),
         "--progress", "plain", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".shoal-"))


def _terminate_mid_export(root: Path, *extra: str) -> tuple[int, str]:
    build = _build(root, *extra)
    try:
        wait_for(
            lambda: any(n.startswith(".shoal-staging-alpha") for n in _leftovers(root)),
            120,
            what="the export's staging folder",
        )
        build.send_signal(signal.SIGTERM)
        _, err = build.communicate(timeout=60)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
    return build.returncode, err


def test_sigterm_mid_export_leaves_no_staging_and_the_previous_entry_whole(
    tmp_path: Path, tiny_model
) -> None:
    copy_checkpoint(tiny_model("bert"), tmp_path / "alpha")
    (tmp_path / "catalog.yaml").write_text(CATALOG)

    code, err = _terminate_mid_export(tmp_path)
    assert code != 0 and "Traceback" not in err, err
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "repo").exists() or list((tmp_path / "repo").iterdir()) == []

    assert _build(tmp_path).wait(timeout=300) == 0
    assert Manifest.read(tmp_path / "repo" / "alpha").version == 1

    code, err = _terminate_mid_export(tmp_path, "--force")
    assert code != 0 and "Traceback" not in err, err
    assert _leftovers(tmp_path) == []
    assert [(r.name, r.problems) for r in check_repository(tmp_path / "repo")] == [("alpha", [])]
    assert Manifest.read(tmp_path / "repo" / "alpha").version == 1
