"""Pure parts of `shoal build`: InferenceModel manifests, the summary table, export admission."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from shoal.catalog.display import render_markdown_summary, render_summary
from shoal.catalog.execution import ModelResult, Status, next_to_start
from shoal.catalog.manifests import (
    GENERATED_HEADER,
    build_inference_model,
    render,
    write_manifests,
)
from shoal.catalog.schema import parse_catalog
from shoal.contract import Task
from shoal.operator.crds import API_VERSION, MODEL_KIND, model_crd
from tests.model_repository.sample_manifests import sample_manifest


@pytest.fixture
def catalog(tmp_path: Path):
    (tmp_path / "src").mkdir()
    text = """\
defaults: {pool: cpu}
models:
  - {name: from-manifest, source: src, pinned: true, priority: 3, minReplicas: 2}
  - {name: overridden, source: src, gpuClass: a100, memory: 3Gi, namespace: team-a}
"""
    return parse_catalog(text, tmp_path / "catalog.yaml", namespace="ml")


def crd_schema() -> dict:
    return model_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_inference_models_follow_the_crd_schema_with_memory_from_the_manifest(catalog) -> None:
    manifest = sample_manifest(Task.EMBED, name="from-manifest")
    resource = build_inference_model(catalog.models[0], manifest, "s3://bucket/models")
    jsonschema.validate(resource, crd_schema())
    assert resource["apiVersion"] == API_VERSION and resource["kind"] == MODEL_KIND
    assert resource["metadata"]["name"] == "from-manifest"
    assert resource["metadata"]["namespace"] == "ml"
    assert resource["metadata"]["annotations"]["shoal.dev/repository"] == "s3://bucket/models"
    assert resource["metadata"]["annotations"]["shoal.dev/source"] == "src"
    assert resource["spec"] == {
        "entry": "from-manifest",
        "memory": manifest.memory_bytes,
        "pool": "cpu",
        "pinned": True,
        "priority": 3,
        "minReplicas": 2,
    }


def test_a_memory_override_and_a_gpu_class_replace_the_defaults(catalog) -> None:
    manifest = sample_manifest(Task.RERANK, name="overridden")
    resource = build_inference_model(catalog.models[1], manifest, "/repo")
    jsonschema.validate(resource, crd_schema())
    assert resource["spec"] == {"entry": "overridden", "memory": "3Gi", "gpuClass": "a100"}
    assert resource["metadata"]["namespace"] == "team-a"


def test_the_crd_schema_rejects_what_the_operator_would_reject(catalog) -> None:
    """Guards the test above: the schema used really checks specs."""
    resource = build_inference_model(catalog.models[0], sample_manifest(Task.EMBED), "/r")
    resource["spec"]["gpuClass"] = "a100"  # both pool and gpuClass: oneOf fails
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(resource, crd_schema())


def test_write_manifests_removes_only_its_own_files_of_models_gone_from_the_catalog(
    tmp_path: Path, catalog
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "gone.yaml").write_text(f"{GENERATED_HEADER} from catalog.yaml\nkind: InferenceModel\n")
    (out / "handwritten.yaml").write_text("kind: InferencePool\n")
    model = catalog.models[0]
    resource = build_inference_model(model, sample_manifest(Task.EMBED), "/r")
    written, removed = write_manifests(out, catalog.path, {model.name: resource}, {model.name})
    assert written == [out / "from-manifest.yaml"]
    assert removed == [out / "gone.yaml"]
    assert (out / "handwritten.yaml").exists()
    text = (out / "from-manifest.yaml").read_text()
    assert text == render(resource, catalog.path)
    assert yaml.safe_load(text) == resource


def results() -> list[ModelResult]:
    return [
        ModelResult("a", Status.BUILT, "new", 12.34, sample_manifest(Task.EMBED, name="a")),
        ModelResult("b", Status.SKIPPED, "unchanged", 0, sample_manifest(Task.RERANK, name="b")),
        ModelResult("c", Status.FAILED, "ExportError: config.json | broken\nmore", 1.5),
    ]


def test_the_summary_has_a_row_per_model_and_the_counts() -> None:
    text = render_summary(results())
    lines = text.splitlines()
    assert lines[0].split() == ["model", "status", "parity", "size", "time", "note"]
    assert lines[2].split()[:2] == ["a", "built"] and "12.3 s" in lines[2]
    assert lines[3].split()[:2] == ["b", "skipped"]
    assert lines[4].split()[:2] == ["c", "failed"] and "config.json | broken" in lines[4]
    assert lines[5] == "1 built, 1 skipped, 1 failed"
    # The whole message of each failure follows the table (its note is cut to one line).
    assert lines[7:] == ["failures:", "  c: ExportError: config.json | broken", "    more"]
    markdown = render_markdown_summary(results(), "catalog.yaml")
    assert "| c | failed | - | - | 1.5 s | ExportError: config.json \\| broken |" in markdown


@pytest.mark.parametrize(
    ("pending", "running", "jobs", "budget", "expected"),
    [
        ([5], [], 2, 1, 0),  # alone, an export runs even over budget
        ([5, 1], [1], 2, 3, 1),  # the large one waits; a smaller one fits beside
        ([5], [1], 2, 3, None),  # nothing fits: wait for memory
        ([1], [1, 1], 2, 100, None),  # --jobs reached
        ([], [], 4, 100, None),
    ],
)
def test_exports_start_within_jobs_and_memory(pending, running, jobs, budget, expected) -> None:
    assert next_to_start(pending, running, jobs, budget) == expected


def test_the_live_display_shows_running_exports_and_plain_lines(tmp_path: Path) -> None:
    import io

    from shoal.catalog.display import LiveProgress, choose_progress

    stream = io.StringIO()
    progress = choose_progress(stream, live=True)
    assert isinstance(progress, LiveProgress)
    progress.started("a", "new", 1, 0)
    assert "a" in progress.running
    progress.finished(results()[0])
    progress.finished(results()[2])
    progress.close()
    text = stream.getvalue()
    assert "exporting a (new)" in text and "built a in 12.3 s" in text
    assert "FAILED c after 1.5 s: ExportError" in text
    assert not progress.running


def test_storage_options_read_scalars() -> None:
    from shoal.catalog.cli import _storage_options

    assert _storage_options(["endpoint_url=http://h:9000", "use_ssl=false", "n=3"]) == {
        "endpoint_url": "http://h:9000",
        "use_ssl": False,
        "n": 3,
    }
