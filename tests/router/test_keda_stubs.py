"""The committed Python modules of KEDA's external scaler protocol are what
scripts/generate-keda-stubs.sh makes from the committed .proto (grpcio-tools, the dev extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path("shoal/router/externalscaler")


def test_generated_scaler_modules_are_current(tmp_path):
    script = ROOT / "scripts/generate-keda-stubs.sh"
    subprocess.run(
        ["bash", str(script), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in ("externalscaler_pb2.py", "externalscaler_pb2_grpc.py"):
        fresh = (tmp_path / PACKAGE / name).read_text()
        committed = (ROOT / "src" / PACKAGE / name).read_text()
        assert committed == fresh, f"{name} is stale: run scripts/generate-keda-stubs.sh"
