"""Image-text exports (tiny CLIP and SigLIP): one export writes the text entry `NAME` and the image
entry `NAME-image`, both verified against transformers (text and image embeddings, and the image
preprocessing's pixel values), checked clean, listed by `shoal repo list`, re-verified by
`shoal verify`; options that do not apply and clashing names are refused before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shoal.contract import INPUT_IMAGE, INPUT_TEXT, OUTPUT_EMBEDDING, Task, image_entry_name
from shoal.manifest import Manifest
from shoal.model_repository.layout import EntryLayout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FAMILIES = ("clip", "siglip")


@pytest.fixture(scope="module")
def repository(tiny_model, tmp_path_factory) -> Path:
    from shoal.exporter import ExportOptions, export_model

    repository = tmp_path_factory.mktemp("image-text") / "repository"
    for family in FAMILIES:
        export_model(tiny_model(family), family, repository, ExportOptions())
    return repository


def _manifests(repository: Path, family: str) -> tuple[Manifest, Manifest]:
    text = Manifest.read(EntryLayout(repository, family).ensemble_dir)
    image = Manifest.read(EntryLayout(repository, image_entry_name(family)).ensemble_dir)
    return text, image


@pytest.mark.parametrize("family", FAMILIES)
def test_one_export_writes_a_text_entry_and_an_image_entry_into_one_space(
    family, repository
) -> None:
    text, image = _manifests(repository, family)
    assert text.task == image.task == Task.IMAGE_TEXT.value
    assert text.architecture == image.architecture == family
    assert [t.name for t in text.inputs] == [INPUT_TEXT]
    assert [(t.name, t.dtype) for t in image.inputs] == [(INPUT_IMAGE, "BYTES")]
    assert [t.name for t in text.outputs] == [t.name for t in image.outputs] == [OUTPUT_EMBEDDING]
    assert text.dims == image.dims == text.outputs[0].dims[0] == image.outputs[0].dims[0]
    assert text.extra["image_entry"] == image.name and image.extra["text_entry"] == text.name
    assert text.version == image.version
    assert [(t.name, t.dims) for t in image.encoder_inputs] == [("pixel_values", [3, 32, 32])]
    assert image.extra["image_preprocessing"]["height"] == 32
    image_layout = EntryLayout(repository, image.name, image.version)
    assert not image_layout.tokenizer_dir.exists()  # its first step preprocesses images
    assert (image_layout.tokenize_dir / "1" / "image_preprocessing.py").is_file()
    for manifest in (text, image):
        assert manifest.memory_bytes > manifest.weights_bytes > 0 and manifest.parameter_count > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_both_towers_and_the_pixel_values_are_at_fp32_parity(family, repository) -> None:
    text, image = _manifests(repository, family)
    assert {r.output for r in text.parity} == {OUTPUT_EMBEDDING}
    assert {r.output for r in image.parity} == {OUTPUT_EMBEDDING, "pixel_values"}
    for result in text.parity + image.parity:
        assert result.passed and result.dtype == "fp32" and result.value >= 0.99999
    (embedding,) = [r for r in image.parity if r.output == OUTPUT_EMBEDDING]
    assert any(k.startswith("batched/") for k in embedding.details)
    assert any(k.startswith("batch1/") for k in embedding.details)
    pixels = next(r for r in image.parity if r.output == "pixel_values")
    assert {"rgba-40x130.png", "gray-50x50.jpg", "tiny-7x5.webp"} <= set(pixels.details)


def test_the_repository_checks_clean_and_lists_the_task(repository, capsys) -> None:
    from shoal.cli import main
    from shoal.model_repository.repository import check_repository

    reports = check_repository(repository)
    assert sorted(r.name for r in reports) == ["clip", "clip-image", "siglip", "siglip-image"]
    assert {r.name: r.problems for r in reports if r.problems} == {}
    assert main(["repo", "list", str(repository)]) == 0
    listed = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in listed[1:]}
    assert rows == {name: "image-text" for name in rows} and len(rows) == 4


def test_a_changed_image_step_file_is_reported(repository, tmp_path) -> None:
    from shoal.model_repository.repository import check_entry

    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    step = EntryLayout(copy, "clip-image").tokenize_dir / "1" / "image_preprocessing.py"
    step.write_text(step.read_text() + "\n# edited\n")
    problems = check_entry(copy, "clip-image").problems
    assert any("image_preprocessing.py: sha256 does not match" in p for p in problems)


@pytest.mark.parametrize("entry", ["siglip", "siglip-image"])
def test_verify_reruns_the_parity_of_either_entry(repository, entry) -> None:
    from shoal.exporter import verify_entry

    results = verify_entry(repository / entry)
    assert results and all(r.passed for r in results)
    expected = {OUTPUT_EMBEDDING} | ({"pixel_values"} if entry.endswith("-image") else set())
    assert {r.output for r in results} == expected


def test_an_fp16_export_checks_both_towers_at_both_dtypes(tiny_model, tmp_path) -> None:
    from shoal.exporter import ExportOptions, export_model

    export_model(tiny_model("clip"), "c", tmp_path / "repo", ExportOptions(dtype="fp16"))
    text, image = _manifests(tmp_path / "repo", "c")
    for manifest in (text, image):
        assert manifest.dtype == "fp16"
        assert {r.dtype for r in manifest.parity} == {"fp32", "fp16"}
        assert all(r.passed for r in manifest.parity)


def test_an_int8_tower_below_the_bar_is_refused_naming_it(tiny_model, tmp_path) -> None:
    """Dynamic int8 quantization moves the tiny random CLIP's text vectors to cosine ~0.984
    (the int8 bar is 0.99): the export is refused, and nothing is written."""
    from shoal.exporter import ExportOptions, export_model
    from shoal.exporter.errors import ParityError

    with pytest.raises(ParityError, match=r"int8 conversion of .*'s text tower failed parity"):
        export_model(tiny_model("clip"), "c", tmp_path / "repo", ExportOptions(dtype="int8"))
    assert not any((tmp_path / "repo").iterdir())


def test_options_that_do_not_apply_are_refused(tiny_model, tmp_path) -> None:
    from shoal.exporter import ExportError, ExportOptions, export_model

    with pytest.raises(ExportError, match="--pooling, --dims do not apply to image-text"):
        export_model(tiny_model("clip"), "c", tmp_path / "r", ExportOptions(pooling="cls", dims=8))
    with pytest.raises(ExportError, match="--adapter do not apply to image-text"):
        export_model(
            tiny_model("clip"), "c", tmp_path / "r", ExportOptions(adapters=(("a", str(tmp_path)),))
        )
    with pytest.raises(ExportError, match="exports task image-text .* not 'embed'"):
        export_model(tiny_model("clip"), "c", tmp_path / "r", ExportOptions(task="embed"))
    with pytest.raises(ExportError, match="--max-length 100 exceeds the text tower's 64"):
        export_model(tiny_model("clip"), "c", tmp_path / "r", ExportOptions(max_length=100))
    assert not (tmp_path / "r").exists()


def test_a_foreign_folder_named_like_the_image_entry_is_never_replaced(
    tiny_model, tmp_path
) -> None:
    from shoal.exporter import ExportError, ExportOptions, export_model

    repository = tmp_path / "r"
    (repository / "c-image" / "1").mkdir(parents=True)
    with pytest.raises(ExportError, match="c-image exist but are not a shoal entry"):
        export_model(tiny_model("clip"), "c", repository, ExportOptions())
    assert sorted(p.name for p in repository.iterdir()) == ["c-image"]


def test_a_checkpoint_without_its_image_processor_settings_is_refused(tiny_model, tmp_path) -> None:
    from shoal.exporter import ExportError, ExportOptions, export_model

    checkpoint = tmp_path / "clip"
    shutil.copytree(tiny_model("clip"), checkpoint)
    (checkpoint / "preprocessor_config.json").unlink()
    with pytest.raises(ExportError, match="preprocessor_config.json not found"):
        export_model(checkpoint, "c", tmp_path / "r", ExportOptions())


def test_the_image_limits_are_set_at_export_from_the_command_line(tiny_model, tmp_path, capsys):
    import json

    from shoal.cli import main

    repository = tmp_path / "repository"
    args = ["export", str(tiny_model("siglip")), "--name", "s", "--repository", str(repository)]
    assert main([*args, "--max-image-pixels", "12345", "--max-image-bytes", "6789"]) == 0
    printed = capsys.readouterr().out
    assert "exported s: siglip image-text" in printed and "exported s-image:" in printed
    assert "pixel_values" in printed  # the image entry's parity table too
    step = EntryLayout(repository, "s-image").tokenize_dir / "1" / "step.json"
    settings = json.loads(step.read_text())
    assert (settings["max_image_pixels"], settings["max_image_bytes"]) == (12345, 6789)
    default = json.loads(
        (EntryLayout(repository, "s").tokenize_dir / "1" / "step.json").read_text()
    )
    assert "max_image_pixels" not in default  # the text entry has no images


def test_a_pixel_limit_below_one_is_refused(tiny_model, tmp_path, capsys):
    from shoal.cli import main

    args = ["export", str(tiny_model("clip")), "--name", "c", "--repository", str(tmp_path / "r")]
    assert main([*args, "--max-image-pixels", "0"]) == 2
    assert "--max-image-pixels must be at least 1, got 0" in capsys.readouterr().err
