"""Failure paths: each gives a clear error naming the file or option, and leaves nothing behind."""

from __future__ import annotations

import json
import shutil

import pytest

from shoal.exporter import ExportError, ExportOptions, ParityError, export_model
from shoal.model_repository.layout import EntryLayout
from shoal.model_repository.repository import check_entry


def copy_of(tiny_model, family, tmp_path):
    folder = tmp_path / f"{family}-copy"
    shutil.copytree(tiny_model(family), folder)
    return folder


def assert_untouched(repository, before):
    after = sorted(p.name for p in repository.iterdir()) if repository.exists() else []
    assert after == before
    leftovers = [p for p in repository.parent.iterdir() if p.name.startswith(".shoal-staging")]
    assert not leftovers


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "config.json not found"),
        ("model.safetensors", "no weights"),
        ("tokenizer.json", "tokenizer.json not found"),
    ],
)
def test_missing_files_are_named(remove, message, tiny_model, tmp_path):
    source = copy_of(tiny_model, "bert", tmp_path)
    (source / remove).unlink()
    repository = tmp_path / "repo"
    with pytest.raises(ExportError, match=message):
        export_model(source, "m", repository)
    assert_untouched(repository, [])


def test_truncated_safetensors_is_reported_as_corrupt(tiny_model, tmp_path):
    source = copy_of(tiny_model, "bert", tmp_path)
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ExportError, match=r"model.safetensors is truncated or corrupt"):
        export_model(source, "m", tmp_path / "repo")
    assert_untouched(tmp_path / "repo", [])


def test_unsupported_architecture_lists_supported_families(tiny_model, tmp_path):
    source = copy_of(tiny_model, "bert", tmp_path)
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ExportError, match=r"unsupported architecture.*gpt_neox.*bert \(bert\).*qwen3"
    ):
        export_model(source, "m", tmp_path / "repo")


def test_missing_source_and_bad_names_and_options(tmp_path, tiny_model):
    with pytest.raises(ExportError, match="does not exist"):
        export_model(tmp_path / "nowhere", "m", tmp_path / "repo")
    with pytest.raises(ExportError, match="not allowed"):
        export_model(tiny_model("bert"), "a__tokenize", tmp_path / "repo")
    with pytest.raises(ExportError, match="exports tasks"):
        export_model(tiny_model("bert"), "m", tmp_path / "repo", ExportOptions(task="rerank"))
    with pytest.raises(ExportError, match="--dims 999 exceeds"):
        export_model(tiny_model("bert"), "m", tmp_path / "repo", ExportOptions(dims=999))
    with pytest.raises(ValueError, match="pooling 'sum'"):
        ExportOptions(pooling="sum")


@pytest.mark.slow
def test_existing_name_needs_overwrite_and_is_then_swapped(exported, tiny_model, tmp_path):
    shared, manifest = exported("bert")
    # A copy: the session's exported entries are shared with other tests, never rewritten.
    repository = tmp_path / "repository"
    shutil.copytree(shared, repository)
    before = sorted(p.name for p in repository.iterdir())
    with pytest.raises(ExportError, match="already exists.*--overwrite"):
        export_model(tiny_model("bert"), manifest.name, repository)
    assert_untouched(repository, before)
    replaced = export_model(
        tiny_model("bert"),
        manifest.name,
        repository,
        ExportOptions(max_length=48, overwrite=True, dims=16),
    )
    assert replaced.dims == 16 and sorted(p.name for p in repository.iterdir()) == before
    again = export_model(
        tiny_model("bert"), manifest.name, repository, ExportOptions(max_length=48, overwrite=True)
    )
    # Each export is a new Triton version of all four models; the old version is gone.
    assert (manifest.version, replaced.version, again.version) == (1, 2, 3)
    for model in EntryLayout(repository, manifest.name).triton_models:
        assert sorted(p.name for p in (repository / model).iterdir() if p.is_dir()) == ["3"]
        assert "versions: [ 3 ]" in (repository / model / "config.pbtxt").read_text()
    assert check_entry(repository, manifest.name).problems == []


@pytest.mark.parametrize("folder", ["m", "m__tokenize", "m__postprocess"])
def test_a_foreign_folder_is_never_replaced(tmp_path, tiny_model, folder):
    repository = tmp_path / "repo"
    (repository / folder).mkdir(parents=True)
    (repository / folder / "theirs.txt").write_text("not shoal's\n")
    with pytest.raises(ExportError, match=f"{folder} exist but are not a shoal entry"):
        export_model(tiny_model("bert"), "m", repository, ExportOptions(overwrite=True))
    assert (repository / folder / "theirs.txt").read_text() == "not shoal's\n"


@pytest.mark.slow
def test_failing_parity_reports_figures_and_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    """A reference that pools differently from the graph (a real pooling bug) must fail."""
    import torch

    from shoal.exporter import reference

    monkeypatch.setattr(
        reference,
        "pool_one",
        lambda hidden, pooling: hidden[0] * 0 + torch.tensor(1.0) + hidden[-1],
    )
    repository = tmp_path / "repo"
    with pytest.raises(
        ParityError, match=r"EMBEDDING fp32: min_cosine 0\.\d+ \(threshold 0\.99999\); worst probe"
    ):
        export_model(tiny_model("bert"), "m", repository, ExportOptions(max_length=48))
    assert_untouched(repository, [])


def test_cli_prints_user_errors_without_traceback(tmp_path, capsys):
    from shoal.cli import main

    assert (
        main(
            [
                "export",
                str(tmp_path / "nowhere"),
                "--name",
                "m",
                "--repository",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_a_checkpoint_whose_head_shoal_does_not_export_is_refused_unless_asked(
    tiny_model, tmp_path
):
    """A question-answering checkpoint would export as an embedder without its head. Refused,
    naming the head; an explicit --task exports the backbone alone."""
    import shutil

    from transformers import BertConfig, BertForQuestionAnswering

    from shoal.exporter import ExportOptions, export_model

    source = tmp_path / "ner"
    shutil.copytree(tiny_model("bert"), source)
    config = BertConfig.from_pretrained(source)
    BertForQuestionAnswering(config).save_pretrained(source)
    with pytest.raises(ExportError) as refused:
        export_model(source, "ner", tmp_path / "repository", ExportOptions(max_length=16))
    message = str(refused.value)
    assert "BertForQuestionAnswering" in message and "question answering head" in message
    assert "--task embed" in message
    assert not (tmp_path / "repository" / "ner").exists()
    manifest = export_model(
        source, "ner", tmp_path / "repository", ExportOptions(task="embed", max_length=16)
    )
    assert manifest.task == "embed"


def test_a_token_classifier_exports_its_backbone_when_embed_is_asked_for(tiny_model, tmp_path):
    """The token-classification family owns the head; --task embed still gets the encoder."""
    from shoal.exporter import ExportOptions, export_model

    source = tiny_model("token-classification")
    manifest = export_model(
        source, "ner", tmp_path / "repository", ExportOptions(task="embed", max_length=16)
    )
    assert manifest.task == "embed" and manifest.architecture == "bert"


def test_aggregation_is_refused_for_other_tasks(tiny_model, tmp_path):
    from shoal.exporter import ExportOptions, export_model

    with pytest.raises(ExportError, match="--aggregation applies to task extract"):
        export_model(
            tiny_model("bert"),
            "e",
            tmp_path / "r",
            ExportOptions(aggregation="first", max_length=16),
        )
    with pytest.raises(ValueError, match="aggregation 'mean' is not one of"):
        ExportOptions(aggregation="mean")


def test_a_sentence_transformers_module_shoal_does_not_export_is_refused(tiny_model, tmp_path):
    """A module after pooling that shoal does not reproduce used to be dropped silently (vectors
    of the wrong values, or width). Refused now, naming it; so is a Dense module with an
    activation (only linear ones fold into the graph)."""
    source = tmp_path / "layer-norm"
    shutil.copytree(tiny_model("bert", sentence_transformers_pooling="mean"), source)
    modules = json.loads((source / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "3", "path": "3_LayerNorm",
                    "type": "sentence_transformers.models.LayerNorm"})  # fmt: skip
    (source / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ExportError, match=r"models.LayerNorm module \(3_LayerNorm\)"):
        export_model(source, "ln", tmp_path / "repository", ExportOptions(max_length=16))
    assert not (tmp_path / "repository" / "ln").exists()

    tanh = tmp_path / "tanh"
    shutil.copytree(tiny_model("bert", sentence_transformers_pooling="mean"), tanh)
    modules = json.loads((tanh / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"})  # fmt: skip
    (tanh / "modules.json").write_text(json.dumps(modules))
    (tanh / "3_Dense").mkdir()
    (tanh / "3_Dense" / "config.json").write_text(json.dumps({
        "in_features": 32, "out_features": 8, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh",
    }))  # fmt: skip
    with pytest.raises(ExportError, match="activation torch.nn.modules.activation.Tanh"):
        export_model(tanh, "tanh", tmp_path / "repository", ExportOptions(max_length=16))
