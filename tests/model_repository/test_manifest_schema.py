"""The manifest schema: every malformed shoal.json is one ManifestError naming the file and the
field, never a traceback of some other type (every reader goes through Manifest.read/parse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.contract import Task
from shoal.manifest import Manifest, ManifestError
from tests.model_repository.sample_manifests import sample_manifest


def _valid() -> dict:
    return json.loads(sample_manifest(Task.EMBED).to_json())


def _with(**changes) -> dict:
    data = _valid()
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return data


def test_a_written_manifest_reads_back_equal(tmp_path: Path) -> None:
    manifest = sample_manifest(Task.MULTI)
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([1, 2], "must be a JSON object, got a list"),
        ("text", "must be a JSON object, got a string"),
        (None, "must be a JSON object, got null"),
        (_with(schema_version="1"), "schema_version '1' is not 1"),
        (_with(name=KeyError), "field 'name' is missing"),
        (_with(max_length="64"), "field 'max_length' must be an integer, got \"64\""),
        (_with(max_length=True), "field 'max_length' must be an integer, got true"),
        (_with(max_length=0), "field 'max_length' must be >= 1"),
        (_with(normalize="yes"), "field 'normalize' must be a boolean"),
        (_with(dims="16"), "field 'dims' must be an integer, got \"16\""),
        (_with(inputs={"TEXT": 1}), "field 'inputs' must be a list of an object (TensorSpec)"),
        (_with(inputs=[{"name": "TEXT", "dtype": "BYTES"}]), "field 'inputs[0].dims' is missing"),
        (
            _with(outputs=[{"name": "E", "dtype": "FP32", "dims": ["x"]}]),
            "field 'outputs[0].dims[0]' must be an integer",
        ),
        (_with(parity=[{"dtype": "fp32"}]), "field 'parity[0].metric' is missing"),
        (_with(sha256=["a"]), "field 'sha256' must be an object of a string"),
        (_with(sha256={"tiny-embed__encode/1/model.onnx": 5}), "must be a string, got 5"),
        (_with(sha256={"tiny-embed__encode/1/model.onnx": "abc"}), "is not a sha256 hex digest"),
        (_with(task="summarize"), "field 'task' is 'summarize', not one of embed"),
        (_with(runtime="tensorrt"), "field 'runtime' is 'tensorrt', not one of"),
        (_with(name="a\n"), "field 'name': model name 'a\\n' is not allowed"),
        (_with(name="a__b"), "field 'name': model name 'a__b' is not allowed"),
        (_with(surprise=1), "unknown field 'surprise'"),
        (_with(memory_bytes=-1), "field 'memory_bytes' must be >= 0"),
        (_with(memory_bytes=1.5), "field 'memory_bytes' must be an integer, got 1.5"),
        (_with(version=0), "field 'version' must be >= 1"),
    ],
)
def test_a_malformed_manifest_is_one_error_naming_the_file_and_field(
    tmp_path: Path, data, says: str
) -> None:
    path = tmp_path / "shoal.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError) as caught:
        Manifest.read(tmp_path)
    assert str(path) in str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"{not json", "is not valid JSON"),
        (b"[" * 100_000, "is not valid JSON"),
        (b"", "is not valid JSON"),
    ],
)
def test_bytes_that_are_not_a_json_manifest(tmp_path: Path, raw: bytes, says: str) -> None:
    (tmp_path / "shoal.json").write_bytes(raw)
    with pytest.raises(ManifestError, match=says):
        Manifest.read(tmp_path)


def test_a_manifest_that_is_a_folder_or_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        Manifest.read(tmp_path)
    (tmp_path / "shoal.json").mkdir()
    with pytest.raises(ManifestError, match="not found"):
        Manifest.read(tmp_path)
