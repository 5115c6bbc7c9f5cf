"""The export memory estimate's input: parameters read from checkpoint headers, not tensors."""

from __future__ import annotations

import json
import struct
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
