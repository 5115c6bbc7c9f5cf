"""Planning a build: the export memory estimate's input (parameters read from checkpoint headers,
not tensors), and the checks of each model against its checkpoint that run before any export."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from shoal.catalog.execution import EXPORT_BASE_BYTES, export_memory_estimate
from shoal.catalog.planning import parameter_count


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = 4 * (shape[0] * shape[1] if len(shape) == 2 else shape[0])
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)


def test_parameters_come_from_the_safetensors_header(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"embeddings": [400, 32], "bias": [32]})
    assert parameter_count(path) == 400 * 32 + 32


def test_other_weight_files_count_four_bytes_per_parameter(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\0" * 4000)
    assert parameter_count(path) == 1000


def test_the_estimate_grows_with_parameters() -> None:
    assert export_memory_estimate(0) == EXPORT_BASE_BYTES
    small, large = export_memory_estimate(22_000_000), export_memory_estimate(560_000_000)
    assert EXPORT_BASE_BYTES < small < large
    assert large - EXPORT_BASE_BYTES > 10 * 2**30  # a 560M-parameter export needs > 10 GiB here


def _hidden_torch(folder: Path) -> dict[str, str]:
    """An environment where `import torch` fails loudly: a process that plans only must not care."""
    package = folder / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('torch imported while planning')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}


def dry_run_refusals(tmp_path: Path) -> dict[str, str]:
    """`shoal build --dry-run` of tmp_path/catalog.yaml without torch, which must fail: model
    name -> its line."""
    result = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "build", str(tmp_path / "catalog.yaml"),
         "--repository", str(tmp_path / "repo"), "--manifests", str(tmp_path / "out"),
         "--dry-run", "--progress", "plain"],
        capture_output=True, text=True, env=_hidden_torch(tmp_path / "shim"), timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def test_dry_run_checks_task_dims_and_max_length_against_the_checkpoint_without_torch(
    tiny_model, tmp_path: Path
) -> None:
    source = tiny_model("bert")
    (tmp_path / "catalog.yaml").write_text(
        f"""\
defaults:
  pool: cpu
models:
  - name: fine
    source: {source}
    max_length: 32
  - name: wrong-task
    source: {source}
    task: rerank
  - name: too-wide
    source: {source}
    dims: 4096
  - name: too-long
    source: {source}
    max_length: 100000
"""
    )
    lines = dry_run_refusals(tmp_path)
    assert lines["fine"].startswith("build (new)")
    assert "family 'bert' exports tasks ['embed'], not 'rerank'" in lines["wrong-task"]
    assert "--dims 4096 exceeds the model's output width (32)" in lines["too-wide"]
    assert "max_length 100000 exceeds what" in lines["too-long"]
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_an_image_text_model_is_refused_by_the_plan_naming_shoal_export(
    tiny_model, tmp_path: Path
) -> None:
    (tmp_path / "catalog.yaml").write_text(
        f"defaults:\n  pool: cpu\nmodels:\n  - name: clip\n    source: {tiny_model('clip')}\n"
    )
    lines = dry_run_refusals(tmp_path)
    assert "image-text model (clip), which exports as two entries" in lines["clip"]
    assert "export it with `shoal export`" in lines["clip"]
