"""Serving entries exported for Triton's native `onnxruntime` backend on a Triton build without
it (the nvidia-pytriton build used locally): a serving view of the repository in which those
entries' encode step runs the same ONNX on the portable (python-backend) runtime.

Who calls it: `shoal serve` / `shoal quickstart` (shoal.runtime.serve) before starting Triton.

Why a view instead of config overrides at load time: Triton re-reads an ensemble's steps from the
repository whenever a client loads the ensemble through the repository API, so an override would
be lost on the next plain `load_model`. In the view every model folder is a symlink to the real
one, except the encode folders that need the fallback: those hold a portable config.pbtxt,
model.py and step.json rendered by the model-repository code, and symlinks to the ONNX files.
Nothing in the real repository changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shoal.contract import STEP_ENCODE, Runtime
from shoal.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingView:
    """The folder Triton serves, and which entries run on the portable fallback."""

    path: Path
    fallback_entries: tuple[str, ...]
    temporary: bool  # a view we made (removed by `close`) rather than the repository itself

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)


def backend_available(backend_directory: Path, backend: str) -> bool:
    return (Path(backend_directory) / backend).is_dir()


def encode_backend(encode_dir: Path) -> str | None:
    """The `backend:` of an encode step's config.pbtxt (None when unreadable)."""
    config = encode_dir / "config.pbtxt"
    try:
        text = config.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "backend":
            return value.strip().strip('"')
    return None


def serving_view(
    repository: Path, manifests: dict[str, Manifest], backend_directory: Path
) -> ServingView:
    """The repository itself when every entry can run as exported; else a temporary view with
    the portable fallback for each entry whose encode step needs the missing onnxruntime backend.
    """
    from shoal.model_repository.layout import EntryLayout  # noqa: PLC0415

    repository = Path(repository).resolve()
    if backend_available(backend_directory, "onnxruntime"):
        return ServingView(repository, (), temporary=False)
    needing = [
        name
        for name in sorted(manifests)
        if encode_backend(EntryLayout(repository, name).encode_dir) == "onnxruntime"
    ]
    if not needing:
        return ServingView(repository, (), temporary=False)
    view = Path(tempfile.mkdtemp(prefix="shoal-serving-view-"))
    try:
        replaced = {EntryLayout(repository, n).encode_dir.name: n for n in needing}
        for child in sorted(repository.iterdir()):
            if child.name.startswith("."):
                continue
            if child.name in replaced:
                _write_portable_encode(child, view / child.name, manifests[replaced[child.name]])
            else:
                (view / child.name).symlink_to(child)
    except Exception:
        shutil.rmtree(view, ignore_errors=True)
        raise
    log.warning(
        "this Triton has no onnxruntime backend: serving %s with the portable runtime (same ONNX "
        "on onnxruntime inside a python step). Export with --runtime portable to skip this, or "
        "serve with a Triton image that has the onnxruntime backend.",
        ", ".join(needing),
    )
    return ServingView(view, tuple(needing), temporary=True)


def _write_portable_encode(source: Path, target: Path, manifest: Manifest) -> None:
    from shoal.model_repository.entry import (  # noqa: PLC0415
        STEP_CONFIG_FILENAME,
        STEP_SOURCES_DIR,
        EntryOptions,
        render_configs,
        step_configs,
    )

    portable = dataclasses.replace(manifest, runtime=Runtime.PORTABLE.value)
    options = EntryOptions()
    version = target / str(manifest.version)  # the entry's version folder (manifest.version)
    version.mkdir(parents=True)
    (target / "config.pbtxt").write_text(render_configs(portable, options)[STEP_ENCODE])
    for item in sorted((source / version.name).iterdir()):  # model.onnx and its external data
        (version / item.name).symlink_to(item)
    shutil.copyfile(STEP_SOURCES_DIR / "encode_portable.py", version / "model.py")
    settings = step_configs(portable, options)[STEP_ENCODE]
    (version / STEP_CONFIG_FILENAME).write_text(json.dumps(settings, indent=2, sort_keys=True))
