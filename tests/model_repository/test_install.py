"""Putting a staged entry in place is all or nothing: an interrupt at every file operation of the
swap leaves the old entry or the new one (never a mix), no staging folder in the repository, and
a folder shoal did not write is never replaced."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.contract import Task
from shoal.manifest import Manifest
from shoal.model_repository import install
from shoal.model_repository.entry import EntryOptions, write_entry
from shoal.model_repository.install import InstallError, install_entry, staging_dir
from shoal.model_repository.layout import EntryLayout
from shoal.model_repository.repository import check_entry
from tests.model_repository.entries import write_graph, write_tokenizer
from tests.model_repository.sample_manifests import sample_manifest

NAME = "tiny-embed"
REAL_RMTREE = shutil.rmtree  # the test's own cleanup is not an operation under test
# Every file operation the swap makes: each is where an interrupt can land.
OPERATIONS: list[tuple[object, str]] = [
    (os, "rename"),
    (os, "fsync"),
    (os, "open"),
    (shutil, "rmtree"),
    (tempfile, "mkdtemp"),
]


def _write(repository: Path, version: int, max_length: int, sources: Path) -> EntryLayout:
    manifest = dataclasses.replace(
        sample_manifest(Task.EMBED, name=NAME), version=version, max_length=max_length
    )
    manifest.extra["tokenization"]["max_length"] = max_length
    sources.mkdir(parents=True, exist_ok=True)
    graph = write_graph(manifest, sources / "model.onnx")
    return write_entry(
        repository, manifest, graph, write_tokenizer(sources / "tok"), EntryOptions()
    )


@dataclasses.dataclass
class Scene:
    root: Path
    repository: Path
    staging: Path
    staged: EntryLayout

    @property
    def target(self) -> EntryLayout:
        return EntryLayout(self.repository, NAME, 2)

    def install(self) -> None:
        try:
            install_entry(self.staged, self.target, scratch=self.root)
        finally:
            REAL_RMTREE(self.staging, ignore_errors=True)  # as the exporter does


def _scene(root: Path) -> Scene:
    root.mkdir(parents=True)
    repository = root / "repo"
    _write(repository, 1, 64, root / "old-sources")
    staging = staging_dir(repository, NAME)
    staged = _write(staging / "repository", 2, 48, root / "new-sources")
    return Scene(root, repository, staging, staged)


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, target: int) -> Callable[[], list[str]]:
    """Wrap every operation; the `target`-th call (1-based) raises KeyboardInterrupt instead of
    running. Returns the names of the calls made so far."""
    calls: list[str] = []
    for module, name in OPERATIONS:
        original = getattr(module, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(_name)
            if len(calls) == target:
                raise KeyboardInterrupt
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return lambda: calls


def _served_version(scene: Scene) -> int:
    """The version the repository holds, after checking it is whole (every hash, every config)."""
    manifest = Manifest.read(scene.repository / NAME)
    assert check_entry(scene.repository, NAME).problems == []
    assert sorted(p.name for p in scene.repository.iterdir()) == sorted(
        EntryLayout(scene.repository, NAME).triton_models
    )
    for model in EntryLayout(scene.repository, NAME).triton_models:
        versions = [p.name for p in (scene.repository / model).iterdir() if p.is_dir()]
        assert versions == [str(manifest.version)], (model, versions)
    return manifest.version


def _count_operations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    scene = _scene(tmp_path / "count")
    with monkeypatch.context() as patch:
        calls = _interrupt_at(patch, 0)
        scene.install()
        return list(calls())


def test_an_interrupt_at_every_file_operation_leaves_the_old_or_the_new_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operations = _count_operations(tmp_path, monkeypatch)
    assert operations.count("rename") == 8  # four folders aside, four in
    # The new entry counts from the fsync of the repository folder after the last rename.
    last_rename = len(operations) - operations[::-1].index("rename")
    committed = operations.index("fsync", last_rename) + 1
    for index, operation in enumerate(operations, start=1):
        scene = _scene(tmp_path / f"at-{index}")
        with monkeypatch.context() as patch:
            _interrupt_at(patch, index)
            with pytest.raises(KeyboardInterrupt):
                scene.install()
        expected = 2 if index > committed else 1
        assert _served_version(scene) == expected, (index, operation)
        leftovers = [p.name for p in scene.root.iterdir() if p.name.startswith(".shoal-")]
        if index <= committed:  # (after it, only the old version's removal can be cut short)
            assert leftovers == [], (index, operation, leftovers)


def test_without_interrupts_the_new_version_is_in_place(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "ok")
    scene.install()
    assert _served_version(scene) == 2
    assert [p.name for p in scene.root.iterdir() if p.name.startswith(".shoal-")] == []


def test_ctrl_c_during_the_swap_waits_until_the_entry_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = _scene(tmp_path / "signal")
    renames = []
    original = os.rename

    def rename(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        renames.append(args)
        if len(renames) == 2:  # between the folders of two steps
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        scene.install()
    assert len(renames) == 8  # every folder swapped before the interrupt took effect
    assert _served_version(scene) == 2


def test_a_failed_restore_says_where_the_old_folders_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = _scene(tmp_path / "restore")
    original = os.rename
    calls = []

    def rename(source, destination):  # noqa: ANN001, ANN202
        calls.append(source)
        if len(calls) >= 4:  # the third folder's swap fails, and so does every restore
            raise OSError(28, "No space left on device")
        return original(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(InstallError, match=r"its folders are kept in .*\.shoal-replaced-") as err:
        scene.install()
    aside = Path(str(err.value).split("kept in ")[1].split(":")[0])
    assert sorted(p.name for p in aside.iterdir()) == [f"{NAME}__encode", f"{NAME}__tokenize"]


def test_folders_shoal_did_not_write_are_never_replaced(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "foreign")
    shutil.rmtree(scene.repository / NAME)  # the steps remain, without an entry manifest
    (scene.repository / f"{NAME}__tokenize" / "mine.txt").write_text("someone's work\n")
    with pytest.raises(InstallError, match=r"are not a shoal entry"):
        scene.install()
    assert (scene.repository / f"{NAME}__tokenize" / "mine.txt").read_text() == "someone's work\n"


def test_staging_is_beside_the_repository_in_a_dot_folder(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    staging = staging_dir(repository, NAME)
    assert staging.parent == tmp_path and staging.name.startswith(install.STAGING_PREFIX)
