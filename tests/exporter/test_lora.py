"""LoRA adapters exported on one base graph (`shoal export --adapter NAME=PATH`): each adapter is a
small onnxruntime adapter file whose parity against PEFT's merged model is checked on every
export; bad adapters are refused with the adapter's name and the fix."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shoal.cli import main
from shoal.contract import INPUT_ADAPTER
from shoal.exporter import ExportError, ExportOptions, export_model
from shoal.manifest import Manifest, ManifestError
from shoal.model_repository.entry import EntryError, EntryOptions, render_configs
from shoal.model_repository.layout import EntryLayout
from shoal.model_repository.repository import check_entry, parse_config
from tests.support.lora import (
    ADAPTERS,
    MAX_LENGTH,
    TEXTS,
    build_adapters,
    cosines,
    export_with_adapters,
)
from tests.support.tiny_models import build_tiny_lora_adapter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def base(tiny_model) -> Path:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory) -> dict[str, Path]:
    return build_adapters(base, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def exported(base, adapters, tmp_path_factory) -> tuple[Path, Manifest]:
    repository = tmp_path_factory.mktemp("lora") / "repository"
    return repository, export_with_adapters(base, adapters, repository, "emb")


def _local_vectors(repository: Path, adapter: str | None, texts: list[str]) -> np.ndarray:
    """The entry's graph on onnxruntime, with `adapter` active, pooled as the entry does."""
    import onnxruntime as ort

    from shoal.postprocessing import postprocess
    from shoal.tokenization import TextEncoder

    manifest = Manifest.read(repository / "emb")
    layout = EntryLayout(repository, "emb", manifest.version)
    session = ort.InferenceSession(str(layout.onnx_path), providers=["CPUExecutionProvider"])
    options = None
    if adapter is not None:
        lora = ort.LoraAdapter()
        lora.Load(str(layout.onnx_path.parent / f"adapters/{adapter}.onnx_adapter"))
        options = ort.RunOptions()
        options.add_active_adapter(lora)
    encoder = TextEncoder.from_file(
        layout.tokenizer_dir / "tokenizer.json", manifest.extra["tokenization"]
    )
    tokens = encoder.encode(texts)
    feed = {i.name: tokens[i.name] for i in session.get_inputs()}
    (hidden,) = session.run(None, feed, options)
    out = postprocess(
        "embed",
        {"hidden_states": hidden},
        tokens["input_ids"],
        tokens["attention_mask"],
        manifest.extra["postprocessing"],
        {},
    )
    return out["EMBEDDING"]


def test_each_adapter_is_a_small_file_with_its_parity_against_peft(exported) -> None:
    repository, manifest = exported
    assert [a.name for a in manifest.adapters] == list(ADAPTERS)
    graph_bytes = manifest.weights_bytes
    for spec in manifest.adapters:
        options = ADAPTERS[spec.name]
        assert (spec.rank, spec.alpha) == (options["rank"], options["alpha"])
        assert spec.target_modules and all(
            m.rsplit(".", 1)[-1] in options["target_modules"] for m in spec.target_modules
        )
        assert not any(m.startswith("pooler") for m in spec.target_modules)  # outside the graph
        (result,) = spec.parity
        assert (result.output, result.dtype, result.metric) == ("EMBEDDING", "fp32", "min_cosine")
        assert result.passed and result.value >= 0.99999 and result.threshold == 0.99999
        path = repository / "emb__encode" / str(manifest.version) / spec.file
        assert path.stat().st_size == spec.bytes < graph_bytes / 4
        assert f"emb__encode/{manifest.version}/{spec.file}" in manifest.sha256
    assert manifest.parity and all(r.passed for r in manifest.parity)  # the base's own
    assert [t.name for t in manifest.inputs].count(INPUT_ADAPTER) == 1
    assert INPUT_ADAPTER not in {t.name for t in manifest.encoder_inputs}
    assert not check_entry(repository, "emb").problems
    # Slots on query/key/value: no attention block fuses, and the manifest says why.
    assert manifest.fused_attention == 0
    assert "LoRA slots" in manifest.extra["optimization"]["note"]


def test_repo_list_shows_the_adapters(exported, capsys) -> None:
    repository, _ = exported
    assert main(["repo", "list", str(repository)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("emb ")]
    assert "embed+2 LoRA" in row


def test_the_adapters_really_move_the_vectors(exported) -> None:
    """Parity would pass trivially if an adapter changed nothing: each one moves every text's
    vector well away from the base's, and from the other adapter's."""
    repository, _ = exported
    texts = [t for t in TEXTS if t]
    vectors = {name: _local_vectors(repository, name, texts) for name in [None, *ADAPTERS]}
    legal, medical = ADAPTERS
    assert cosines(vectors[None], vectors[legal]).max() < 0.99
    assert cosines(vectors[None], vectors[medical]).max() < 0.99
    assert cosines(vectors[legal], vectors[medical]).max() < 0.99


def test_memory_counts_the_base_once_plus_each_adapter(base, exported, tmp_path) -> None:
    _, manifest = exported
    plain = export_model(base, "plain", tmp_path / "repo", ExportOptions(max_length=MAX_LENGTH))
    activations = plain.memory_bytes - plain.weights_bytes
    adapters = sum(a.bytes for a in manifest.adapters)
    assert manifest.memory_bytes == manifest.weights_bytes + activations + adapters
    assert plain.adapters == [] and INPUT_ADAPTER not in {t.name for t in plain.inputs}


def test_the_entry_takes_an_optional_adapter_input_for_the_encode_step_only(exported) -> None:
    repository, manifest = exported
    configs = {
        name: parse_config(repository / name / "config.pbtxt")
        for name in ("emb", "emb__tokenize", "emb__encode")
    }
    inputs = {name: {t.name: t for t in c.input} for name, c in configs.items()}
    assert inputs["emb"][INPUT_ADAPTER].optional
    assert inputs["emb__encode"][INPUT_ADAPTER].optional
    assert INPUT_ADAPTER not in inputs["emb__tokenize"]
    encode_step = configs["emb"].ensemble_scheduling.step[1]
    assert encode_step.input_map[INPUT_ADAPTER] == INPUT_ADAPTER
    step = json.loads(
        (repository / "emb__encode" / str(manifest.version) / "step.json").read_text()
    )
    assert step["adapters"] == {a.name: a.file for a in manifest.adapters}
    on_backend = dataclasses.replace(manifest, runtime="onnxruntime")
    with pytest.raises(EntryError, match="only the portable runtime"):
        render_configs(on_backend, EntryOptions())


def test_a_corrupt_adapter_file_is_reported_by_the_entry_check(exported, tmp_path) -> None:
    repository, manifest = exported
    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    spec = manifest.adapters[0]
    (copy / "emb__encode" / str(manifest.version) / spec.file).write_bytes(b"not an adapter")
    problems = check_entry(copy, "emb").problems
    assert any(
        p.startswith(f"LoRA adapter {spec.name!r}") and "corrupt" in p and "--adapter" in p
        for p in problems
    ), problems
    (copy / "emb__encode" / str(manifest.version) / spec.file).unlink()
    assert any(
        f"LoRA adapter {spec.name!r}" in p and "missing" in p
        for p in check_entry(copy, "emb").problems
    )


def test_the_manifest_round_trips_its_adapters_and_refuses_a_bad_one(exported) -> None:
    repository, manifest = exported
    data = json.loads(manifest.to_json())
    assert Manifest.from_dict(data).adapters == manifest.adapters
    data["adapters"][1]["name"] = data["adapters"][0]["name"]
    data["adapters"][1]["file"] = data["adapters"][0]["file"]
    with pytest.raises(ManifestError, match="listed twice"):
        Manifest.from_dict(data)
    data["adapters"][0]["file"] = "../../etc/passwd"
    with pytest.raises(ManifestError, match=r"adapters\[0\]\.file"):
        Manifest.from_dict(data)


# ------------------------------------------------------------------ refused adapters


def _refused(base: Path, adapter: Path, tmp_path: Path) -> str:
    repository = tmp_path / "repository"
    options = ExportOptions(max_length=MAX_LENGTH, adapters=(("bad", str(adapter)),))
    with pytest.raises(ExportError) as caught:
        export_model(base, "emb", repository, options)
    assert not (repository / "emb").exists()  # nothing written
    return str(caught.value)


def test_a_corrupt_adapter_weights_file_is_refused_at_export(base, adapters, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(adapters["legal"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    message = _refused(base, broken, tmp_path)
    assert f"adapter 'bad' ({broken})" in message and "intact" in message


def test_an_adapter_of_another_base_is_refused(base, tiny_model, tmp_path) -> None:
    other = build_tiny_lora_adapter(tiny_model("bert", hidden_size=48), tmp_path / "other")
    message = _refused(base, other, tmp_path)
    assert "adapter 'bad'" in message and "trained on this base model" in message


def test_an_adapter_for_another_head_class_is_refused(tiny_model, tmp_path) -> None:
    """Trained on BertForSequenceClassification (keys under `bert.`), given to an embed export of
    the same weights: PEFT would only warn and load nothing."""
    reranker = tiny_model("reranker")
    adapter = build_tiny_lora_adapter(
        reranker, tmp_path / "head", auto_class="BertForSequenceClassification"
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["modules_to_save"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    repository = tmp_path / "repository"
    options = ExportOptions(task="embed", max_length=MAX_LENGTH, adapters=(("bad", str(adapter)),))
    with pytest.raises(ExportError, match="another model"):
        export_model(reranker, "emb", repository, options)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("use_dora", True, "DoRA"),
        ("bias", "all", "bias='none'"),
        ("modules_to_save", ["classifier"], "modules_to_save"),
        ("peft_type", "IA3", "LoRA adapters"),
    ],
)
def test_adapter_settings_a_slot_cannot_apply_are_refused(
    base, adapters, tmp_path, key, value, expected
) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(adapters["legal"], changed)
    config = json.loads((changed / "adapter_config.json").read_text())
    config[key] = value
    (changed / "adapter_config.json").write_text(json.dumps(config))
    assert expected in _refused(base, changed, tmp_path)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"dtype": "fp16"}, "fp32 only"),
        ({"runtime": "onnxruntime"}, "--runtime portable"),
        ({"adapters": (("a b", "x"),)}, "adapter name 'a b' is not allowed"),
        ({"adapters": (("a", "x"), ("a", "y"))}, "given twice"),
    ],
)
def test_export_options_refuse_what_adapters_cannot_do(options, expected) -> None:
    options = {"adapters": (("a", "x"),), **options}
    with pytest.raises(ValueError, match=expected):
        ExportOptions(**options)


def test_the_command_line_exports_adapters_and_refuses_bad_values(
    base, adapters, tmp_path, capsys
) -> None:
    repository = tmp_path / "repository"
    args = ["export", str(base), "--repository", str(repository), "--name", "emb",
            "--max-length", str(MAX_LENGTH)]  # fmt: skip
    assert main([*args, "--adapter", "legal"]) == 2
    assert "is not NAME=PATH" in capsys.readouterr().err
    assert main([*args, "--adapter", f"legal={tmp_path / 'nowhere'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([*args, "--adapter", f"legal={adapters['legal']}"]) == 0
    capsys.readouterr()
    assert [a.name for a in Manifest.read(repository / "emb").adapters] == ["legal"]


def test_verify_rechecks_every_adapter_and_catches_a_changed_one(
    exported, adapters, tmp_path, capsys
) -> None:
    """`shoal verify` re-runs each adapter's parity against PEFT's merged model of its folder; an
    adapter retrained after the export no longer matches its exported file."""
    repository, manifest = exported
    assert main(["verify", str(repository / "emb")]) == 0
    table = capsys.readouterr().out
    assert all(f"EMBEDDING@{name}" in table for name in ADAPTERS)
    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    retrained = build_tiny_lora_adapter(
        Path(manifest.source), tmp_path / "retrained", **{**ADAPTERS["legal"], "seed": 9}
    )
    data = json.loads((copy / "emb" / "shoal.json").read_text())
    data["adapters"][0]["source"] = str(retrained)
    (copy / "emb" / "shoal.json").write_text(json.dumps(data))
    assert main(["verify", str(copy / "emb")]) == 1
    assert "EMBEDDING@legal" in capsys.readouterr().out
