"""`write_entry` lays out a complete entry; `check_entry` / `shoal repo check` find every way an
entry can be broken after that, and `shoal repo list` shows what a repository holds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from shoal.cli import main
from shoal.contract import Runtime, Task
from shoal.manifest import Manifest
from shoal.model_repository.entry import EntryError, EntryOptions, write_entry
from shoal.model_repository.repository import check_entry, check_repository, list_entries
from tests.model_repository.entries import write_graph, write_sample_entry, write_tokenizer
from tests.model_repository.sample_manifests import sample_manifest


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    return repo


@pytest.mark.parametrize("runtime", list(Runtime))
@pytest.mark.parametrize("task", list(Task))
def test_a_written_entry_of_every_task_and_runtime_checks_clean(
    repository: Path, task: Task, runtime: Runtime
) -> None:
    layout = write_sample_entry(repository, task, runtime)
    assert check_entry(repository, layout.model).problems == []
    manifest = Manifest.read(layout.ensemble_dir)
    assert f"{layout.model}__encode/1/model.onnx" in manifest.sha256
    assert f"{layout.model}__tokenize/1/tokenizer/tokenizer.json" in manifest.sha256
    assert (layout.encode_dir / "1" / "model.py").is_file() == (runtime is Runtime.PORTABLE)
    assert (layout.tokenize_dir / "1" / "tokenization.py").is_file()
    assert (layout.postprocess_dir / "1" / "postprocessing.py").is_file()


def test_check_names_a_missing_file(repository: Path) -> None:
    layout = write_sample_entry(repository, Task.EMBED)
    (layout.postprocess_dir / "1" / "postprocessing.py").unlink()
    problems = check_entry(repository, layout.model).problems
    assert problems == [f"{layout.model}__postprocess/1/postprocessing.py is missing"]


@pytest.mark.parametrize(
    "relative",
    [
        "__tokenize/1/model.py",
        "__tokenize/1/tokenization.py",
        "__tokenize/1/step.json",
        "__tokenize/1/tokenizer/tokenizer_config.json",
        "__postprocess/1/model.py",
        "__postprocess/1/postprocessing.py",
        "__postprocess/config.pbtxt",
        "__encode/1/model.py",
        "__encode/1/model.onnx",
        "/config.pbtxt",
    ],
)
def test_check_catches_a_change_to_any_file_triton_reads_or_executes(
    repository: Path, relative: str
) -> None:
    layout = write_sample_entry(repository, Task.EMBED)
    path = repository / f"{layout.model}{relative}"
    with open(path, "ab") as handle:
        handle.write(b"\n# changed\n")
    problems = check_entry(repository, layout.model).problems
    assert f"{layout.model}{relative}: sha256 does not match the manifest" in problems[0]


def test_check_catches_a_file_added_to_a_version_folder(repository: Path) -> None:
    layout = write_sample_entry(repository, Task.EMBED)
    (layout.tokenize_dir / "1" / "sitecustomize.py").write_text("import os\n")
    (problem,) = check_entry(repository, layout.model).problems
    assert problem.startswith(f"{layout.model}__tokenize/1/sitecustomize.py is not hashed")


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("../outside/model.onnx", "is not a plain relative path"),
        ("/etc/passwd", "is not a plain relative path"),
        ("other__encode/1/model.onnx", "is outside the entry's folders"),
        ("tiny-embed__encode/2/model.onnx", "is outside the entry's version folder 1"),
        ("tiny-embed__encode/1/../../x", "is not a plain relative path"),
    ],
)
def test_a_hash_key_outside_the_entry_is_refused(repository: Path, key: str, why: str) -> None:
    layout = write_sample_entry(repository, Task.EMBED)
    data = json.loads(layout.manifest_path.read_text())
    data["sha256"][key] = "0" * 64
    layout.manifest_path.write_text(json.dumps(data))
    (problem,) = check_entry(repository, layout.model).problems
    assert "field 'sha256'" in problem and why in problem and str(layout.manifest_path) in problem


def test_check_catches_a_tampered_onnx_graph(repository: Path) -> None:
    layout = write_sample_entry(repository, Task.EMBED)
    with open(layout.onnx_path, "ab") as graph:
        graph.write(b"\0")
    (problem,) = check_entry(repository, layout.model).problems
    assert problem.startswith(f"{layout.model}__encode/1/model.onnx: sha256 does not match")
    assert "re-export" in problem


def test_check_reports_where_a_config_does_not_parse(repository: Path) -> None:
    layout = write_sample_entry(repository, Task.RERANK)
    config = layout.encode_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_TOASTER"))
    problem, changed = check_entry(repository, layout.model).problems
    assert changed.startswith(f"{layout.model}__encode/config.pbtxt: sha256 does not match")
    assert "config.pbtxt does not parse as a Triton model config" in problem
    assert "KIND_TOASTER" in problem


def test_check_catches_ensemble_outputs_that_differ_from_the_manifest(repository: Path) -> None:
    layout = write_sample_entry(repository, Task.EMBED)
    config = layout.ensemble_dir / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 16 ]", "dims: [ 8 ]"))
    changed, problem = check_entry(repository, layout.model).problems
    assert changed.startswith(f"{layout.model}/config.pbtxt: sha256 does not match")
    assert "outputs are [EMBEDDING FP32 [8]] but the manifest says [EMBEDDING FP32 [16]]" in problem


def test_check_catches_step_settings_that_disagree_with_the_manifest(repository: Path) -> None:
    layout = write_sample_entry(repository, Task.EMBED)
    path = layout.tokenize_dir / "1" / "step.json"
    settings = json.loads(path.read_text())
    settings["tokenization"]["max_length"] = 9999
    path.write_text(json.dumps(settings))
    changed, problem = check_entry(repository, layout.model).problems
    assert changed.startswith(f"{layout.model}__tokenize/1/step.json: sha256 does not match")
    assert "step.json disagrees with the manifest on ['tokenization']" in problem


def test_an_entry_written_before_a_later_step_key_is_still_whole(repository: Path) -> None:
    """Entries exported by an older shoal lack step.json keys added since (LATER_KEYS): their
    step code does not read them, so the check accepts them; a present key must still match."""
    from shoal.manifest import Manifest
    from shoal.model_repository.entry import entry_hashes

    layout = write_sample_entry(repository, Task.EMBED)
    path = layout.encode_dir / "1" / "step.json"

    def rewrite_step_json(change) -> list[str]:
        settings = json.loads(path.read_text())
        change(settings)
        path.write_text(json.dumps(settings))
        manifest = Manifest.read(layout.ensemble_dir)
        rehashed = dataclasses.replace(manifest, sha256=dict(sorted(entry_hashes(layout).items())))
        rehashed.write(layout.ensemble_dir)
        return check_entry(repository, layout.model).problems

    assert rewrite_step_json(lambda settings: settings.pop("pad_token_id")) == []
    (problem,) = rewrite_step_json(lambda settings: settings.update(pad_token_id=12345))
    assert "disagrees with the manifest on ['pad_token_id']" in problem


def test_check_reports_an_unreadable_manifest_and_a_missing_step(repository: Path) -> None:
    broken = write_sample_entry(repository, Task.EMBED, name="broken")
    broken.manifest_path.write_text("{not json")
    incomplete = write_sample_entry(repository, Task.SPARSE, name="incomplete")
    for path in sorted(incomplete.tokenize_dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    incomplete.tokenize_dir.rmdir()
    reports = {r.name: r.problems for r in check_repository(repository)}
    assert reports["broken"] == [
        f"manifest: {broken.manifest_path} is not valid JSON: "
        + ("Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")
    ]
    assert (
        "incomplete__tokenize: config.pbtxt is missing (the entry is incomplete)"
        in reports["incomplete"]
    )


def test_write_entry_refuses_a_manifest_without_tokenizer_settings(tmp_path: Path) -> None:
    manifest = sample_manifest(Task.EMBED)
    del manifest.extra["tokenization"]
    onnx_path = write_graph(manifest, tmp_path / "model.onnx")
    with pytest.raises(EntryError, match=r"no extra\['tokenization'\] settings"):
        write_entry(
            tmp_path / "repo", manifest, onnx_path, write_tokenizer(tmp_path / "t"), EntryOptions()
        )
    assert not (tmp_path / "repo").exists()


def test_write_entry_copies_external_data_and_hashes_it(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    manifest = sample_manifest(Task.RERANK)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["ids_float"], ["summed"], keepdims=1),
            helper.make_node("Mul", ["summed", "weight"], ["logits"]),
        ],
        "with-weights",
        [
            helper.make_tensor_value_info(t.name, TensorProto.INT64, ["b", "t"])
            for t in manifest.encoder_inputs
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 1])],
        initializer=[numpy_helper.from_array(np.ones(4096, dtype=np.float32)[:1], "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sources = tmp_path / "sources"
    sources.mkdir()
    onnx.save(
        model,
        sources / "graph.onnx",
        save_as_external_data=True,
        location="graph.onnx.data",
        size_threshold=0,
    )
    repo = tmp_path / "repo"
    layout = write_entry(
        repo, manifest, sources / "graph.onnx", write_tokenizer(tmp_path / "t"), EntryOptions()
    )
    assert (layout.encode_dir / "1" / "graph.onnx.data").is_file()
    assert f"{manifest.name}__encode/1/graph.onnx.data" in Manifest.read(layout.ensemble_dir).sha256
    assert check_entry(repo, manifest.name).problems == []


def test_shoal_repo_list_and_check_on_the_command_line(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_sample_entry(repository, Task.EMBED, name="dense")
    bad = write_sample_entry(repository, Task.COLBERT, name="late")
    assert main(["repo", "list", str(repository)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "TASK", "DIMS", "DTYPE", "RUNTIME", "MEMORY", "PARITY"]
    assert out[1].split()[:6] == ["dense", "embed", "16", "fp32", "portable", "1.0"]
    assert "ok fp32 min_cosine=0.999999" in out[1]
    assert [e.name for e in list_entries(repository)] == ["dense", "late"]

    assert main(["repo", "check", str(repository)]) == 0
    bad.onnx_path.unlink()
    assert main(["repo", "check", str(repository)]) == 1
    captured = capsys.readouterr()
    assert "dense: ok" in captured.out
    assert "late: late__encode/1/model.onnx is missing" in captured.err
    assert "1 of 2 entries have problems" in captured.err


def test_shoal_repo_check_on_a_folder_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["repo", "check", str(tmp_path / "nope")]) == 2
    assert "nope does not exist; give the model repository's folder" in capsys.readouterr().err


def test_repo_list_shows_a_failure_first_else_the_served_dtype_closest_to_its_threshold() -> None:
    from types import SimpleNamespace

    from shoal.model_repository.cli import _parity

    def result(dtype, value, threshold, passed=True, metric="min_cosine"):
        return SimpleNamespace(
            dtype=dtype, metric=metric, value=value, threshold=threshold, passed=passed
        )

    int8 = SimpleNamespace(
        dtype="int8", parity=[result("fp32", 1.0, 0.99999), result("int8", 0.9932, 0.99)]
    )
    assert _parity(int8) == "ok int8 min_cosine=0.9932"
    scores = SimpleNamespace(
        dtype="fp32",
        parity=[
            result("fp32", 1e-7, 1e-4, metric="max_scaled_diff"),
            result("fp32", 5e-5, 1e-4, metric="max_scaled_diff"),
        ],
    )
    assert _parity(scores) == "ok fp32 max_scaled_diff=5e-05"
    ranked = SimpleNamespace(  # a reranker: its ranking count passes at 0, the score is shown
        dtype="fp32",
        parity=[
            result("fp32", 6e-8, 1e-5, metric="max_scaled_diff"),
            result("fp32", 0.0, 0.0, metric="discordant_pairs"),
        ],
    )
    assert _parity(ranked) == "ok fp32 max_scaled_diff=6e-08"
    failed = SimpleNamespace(
        dtype="fp32", parity=[result("fp32", 1.0, 0.99999), result("fp32", 0.9, 0.99999, False)]
    )
    assert _parity(failed) == "FAILED fp32 min_cosine=0.9"
