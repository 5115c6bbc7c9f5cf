"""Putting a staged entry into a local model repository: whole or not at all.

Called by the exporter (`shoal export`, and `shoal build` for a local repository) after
`write_entry` staged the four Triton models outside the repository. Rules:

- Staging happens beside the repository (same filesystem, so renames do not copy) in a dot-folder
  that is not inside the repository: Triton never sees a half-written model.
- Every staged file and folder is fsynced before the renames that publish it, and the repository
  folder after them: a power cut leaves the old entry or the new one.
- The four folders are swapped one by one; an old folder is renamed aside first and restored if
  anything fails, so an error (or an interrupt injected at any step) leaves the old entry whole.
  Ctrl-C and SIGTERM that arrive during the swap are held until it is done (then re-raised).
- A folder shoal did not write (no manifest in the entry's ensemble folder) is never replaced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shoal.model_repository.layout import EntryLayout

log = logging.getLogger(__name__)

STAGING_PREFIX = ".shoal-staging-"
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InstallError(RuntimeError):
    """The entry could not be put in place; the message says what the repository now holds."""


def staging_dir(repository: Path, name: str) -> Path:
    """A fresh dot-folder on the repository's filesystem (renames into place must not copy),
    beside the repository when its parent is on the same filesystem and writable (Triton never
    sees it), else inside it (a dot-folder, which is no model name Triton would load)."""
    repository = Path(repository)
    parent = repository.resolve().parent
    same_fs = os.access(parent, os.W_OK) and os.stat(parent).st_dev == os.stat(repository).st_dev
    where = parent if same_fs else repository
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=where))


def fsync_path(path: Path) -> None:
    """fsync one file or folder (a folder's fsync makes the names in it durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every folder, deepest first, `root` last."""
    paths = sorted(Path(root).rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for path in [p for p in paths if p.is_file() and not p.is_symlink()]:
        fsync_path(path)
    for path in [*[p for p in paths if p.is_dir() and not p.is_symlink()], Path(root)]:
        fsync_path(path)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends (the first one is
    re-raised there as KeyboardInterrupt). Outside the main thread, signals cannot be handled in
    Python at all: the block then runs as is."""
    received: list[int] = []
    try:
        previous = {
            s: signal.signal(s, lambda number, _frame: received.append(number))
            for s in HELD_SIGNALS
        }
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        log.info(
            "signal %d arrived while an entry was being put in place; stopping now", received[0]
        )
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, so that `finally` clauses (staging
    folders removed, an old entry restored) run as they do on Ctrl-C. Main thread only."""

    def interrupt(_number: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def foreign_folders(target: EntryLayout) -> list[Path]:
    """The entry's folders that exist although shoal did not write them: any of the four when the
    ensemble folder holds no manifest."""
    existing = [d for d in target.dirs if d.exists()]
    if existing and not target.manifest_path.is_file():
        return existing
    return []


def install_entry(staged: EntryLayout, target: EntryLayout, scratch: Path) -> None:
    """Swap the staged entry's four folders into `target`'s repository, all or none. The old
    folders wait in a dot-folder under `scratch` (same filesystem, outside the staging folder the
    caller removes) until the new ones are in place."""
    foreign = foreign_folders(target)
    if foreign:
        raise InstallError(
            f"{', '.join(map(str, foreign))} exist but are not a shoal entry (no "
            f"{target.manifest_path.name} in {target.ensemble_dir}); shoal will not replace them"
        )
    for directory in staged.dirs:
        fsync_tree(directory)
    aside = Path(tempfile.mkdtemp(prefix=f".shoal-replaced-{target.model}-", dir=scratch))
    with signals_held():
        moved: list[tuple[Path, Path | None]] = []
        try:
            for model in staged.triton_models:  # steps first, the ensemble (with its manifest) last
                source, destination = staged.model_dir(model), target.model_dir(model)
                previous = None
                if destination.exists():
                    previous = aside / model
                    os.rename(destination, previous)
                moved.append((destination, previous))
                os.rename(source, destination)
            fsync_path(target.repository)
        except BaseException as exc:
            _roll_back(moved, aside, target, exc)
            raise
        shutil.rmtree(aside, ignore_errors=True)  # the old version, once the new one is in place


def _roll_back(
    moved: list[tuple[Path, Path | None]], aside: Path, target: EntryLayout, cause: BaseException
) -> None:
    """Undo the renames done so far; if that fails too, say where the old folders are kept."""
    try:
        for destination, previous in reversed(moved):
            if destination.exists() and destination.parent == target.repository:
                shutil.rmtree(destination)
            if previous is not None and previous.exists():
                os.rename(previous, destination)
        fsync_path(target.repository)
    except BaseException as exc:
        raise InstallError(
            f"putting {target.model!r} in place failed ({cause!r}) and so did restoring the "
            f"previous entry ({exc!r}); its folders are kept in {aside}: move them back into "
            f"{target.repository}"
        ) from exc
    shutil.rmtree(aside, ignore_errors=True)
