"""`shoal export` is quiet by default: a real int8 export of a tiny model prints neither the
transformers "Loading weights" progress bar nor onnxruntime's advice on pre-processing before
quantization; with `-v` both show (they are silenced, not lost)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).parents[2]
NOISE = ("Loading weights", "Please consider to run pre-processing before quantization")


def export_int8(checkpoint: Path, repository: Path, *verbose: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS",)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *sys.path])
    env["OMP_NUM_THREADS"] = "2"
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli", *verbose, "export", str(checkpoint), "--name",
         "tiny", "--repository", str(repository), "--dtype", "int8", "--max-length", "32"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exported tiny" in done.stdout
    return done


def test_an_int8_export_prints_no_library_noise_unless_verbose(tiny_model, tmp_path):
    checkpoint = tiny_model("bert")
    quiet = export_int8(checkpoint, tmp_path / "quiet")
    for line in NOISE:
        assert line not in quiet.stderr + quiet.stdout, quiet.stderr
    assert "INFO shoal.exporter.export" in quiet.stderr  # shoal's own progress still shows

    verbose = export_int8(checkpoint, tmp_path / "verbose", "-v")
    for line in NOISE:
        assert line in verbose.stderr, verbose.stderr


def test_a_catalog_build_of_an_int8_model_prints_only_its_own_lines(tiny_model, tmp_path):
    """The export processes of `shoal build` are quiet too: onnxruntime's advice would break
    the live table (checked here on the plain lines, same processes)."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        f"models:\n  - name: tiny\n    source: {tiny_model('bert')}\n    dtype: int8\n"
        "    max_length: 32\n    pool: cpu\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *sys.path])
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "build", str(catalog), "--repository",
         str(tmp_path / "repository"), "--manifests", str(tmp_path / "manifests"),
         "--progress", "plain"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "repository" / "tiny" / "shoal.json").is_file()
    for line in NOISE:
        assert line not in done.stdout + done.stderr, done.stdout + done.stderr
