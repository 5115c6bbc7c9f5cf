"""Where a build puts its entries: a local model repository, or an object store that Triton reads.

Called by `shoal build` (planning reads manifests here; execution exports into
`export_repository()` and then calls `publish`). Two kinds:

- `LocalRepository`: the exporter writes straight into the folder; its own staging and renames make
  each entry appear whole (steps first, ensemble last).
- `RemoteRepository` (`s3://`, `gs://`, any fsspec URL): the exporter writes into a local staging
  folder, then each file is uploaded through fsspec (s3fs / gcsfs, the `publish` extra). Order
  keeps readers from taking a half entry for a whole one: an existing entry's manifest is deleted
  first, the steps are uploaded, then the ensemble folder, and its manifest (`shoal.json`) last.
  Files of an older version that the new one lacks are deleted. Object stores have no empty
  folders, so an empty folder (the ensemble's version folder `1/`, which Triton requires) gets a
  small `.shoal-keep` file.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from shoal.contract import MANIFEST_FILENAME
from shoal.manifest import Manifest, ManifestError
from shoal.model_repository.layout import KEEP_FILENAME, EntryLayout

log = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"


class DestinationError(RuntimeError):
    """The destination cannot be used (missing library, no access); nothing was exported."""


class Destination(Protocol):
    uri: str

    def read_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        """The entry's manifest, or (None, None) when there is no entry, or (None, why)."""

    def entry_problems(self, name: str) -> list[str]:
        """Why the entry is not whole (empty: it is)."""

    def export_repository(self) -> Path:
        """The local folder exports are written into."""

    def publish(self, name: str) -> None:
        """Make the exported entry `name` visible at the destination."""

    def close(self) -> None: ...


REMOTE_SCHEMES = ("s3", "gs", "gcs")  # the object stores Triton itself reads


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def check_scheme(uri: str, what: str = "--repository") -> None:
    """A URL's scheme must be one shoal publishes to (a folder has none, or file://)."""
    scheme = uri.split("://", 1)[0] if is_remote(uri) else ""
    if scheme and scheme not in REMOTE_SCHEMES:
        raise DestinationError(
            f"{what} {uri}: scheme {scheme}:// is not supported; give a folder, or "
            + ", ".join(f"{s}://bucket/prefix" for s in REMOTE_SCHEMES)
        )


def open_destination(uri: str, storage_options: dict[str, Any] | None = None) -> Destination:
    check_scheme(uri)
    if is_remote(uri):
        return RemoteRepository(uri, storage_options or {})
    if storage_options:
        raise DestinationError("--storage-option only applies to object-store repositories")
    return LocalRepository(Path(uri.removeprefix("file://")))


class LocalRepository:
    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.uri = str(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise DestinationError(f"--repository {self.path} is a file; give a folder")

    def read_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        layout = EntryLayout(self.path, name)
        if not layout.ensemble_dir.exists():
            return None, None
        try:
            return Manifest.read(layout.ensemble_dir), None
        except ManifestError as exc:
            return None, str(exc)

    def entry_problems(self, name: str) -> list[str]:
        from shoal.model_repository.repository import check_entry

        return check_entry(self.path, name).problems

    def export_repository(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def publish(self, name: str) -> None:
        """The exporter already moved the entry into place."""

    def close(self) -> None:
        pass


class RemoteRepository:
    def __init__(self, uri: str, storage_options: dict[str, Any]) -> None:
        try:
            import fsspec
        except ImportError as exc:
            raise DestinationError(
                "object-store repositories need fsspec: pip install 'shoal[publish]'"
            ) from exc
        self.uri = uri.rstrip("/")
        try:
            # A fresh instance: cached ones would keep listings from before this build's uploads.
            self.fs, root = fsspec.core.url_to_fs(
                self.uri, skip_instance_cache=True, **storage_options
            )
        except (ImportError, ValueError, OSError) as exc:
            raise DestinationError(
                f"cannot open {self.uri}: {exc} (for s3:// and gs:// install the `publish` extra: "
                "pip install 'shoal[publish]')"
            ) from exc
        self.root = root.rstrip("/")
        self._staging = Path(tempfile.mkdtemp(prefix="shoal-build-staging-"))
        self._check_access()

    def _check_access(self) -> None:
        try:
            self.fs.ls(self.root.split("/", 1)[0], detail=False)  # the bucket itself
        except FileNotFoundError as exc:
            raise DestinationError(
                f"{self.uri}: the bucket does not exist ({exc}); create it first"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - credentials/network errors vary by backend
            raise DestinationError(
                f"cannot list {self.uri}: {type(exc).__name__}: {exc}. Check the credentials in "
                "the environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                "GOOGLE_APPLICATION_CREDENTIALS) and, for S3-compatible stores, "
                "--storage-option endpoint_url=URL"
            ) from exc

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _files_under(self, triton_model: str) -> set[str]:
        """Relative paths of the objects under one Triton model folder."""
        base = self._path(triton_model)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return set()
        return {f[len(base) + 1 :] for f in found if f.startswith(base + "/")}

    def read_manifest(self, name: str) -> tuple[Manifest | None, str | None]:
        path = self._path(name, MANIFEST_FILENAME)
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            if self._files_under(name):
                return None, f"{self.uri}/{name} has no {MANIFEST_FILENAME} (an incomplete upload)"
            return None, None
        try:
            return Manifest.parse(raw, f"{self.uri}/{name}/{MANIFEST_FILENAME}"), None
        except ManifestError as exc:
            return None, str(exc)

    def entry_problems(self, name: str) -> list[str]:
        """Presence, not bytes: every config and every file the manifest hashes must exist.
        (Downloading the weights to re-hash them would cost as much as the export it saves.)"""
        manifest, problem = self.read_manifest(name)
        if manifest is None:
            return [problem or f"{self.uri}/{name} does not exist"]
        layout = EntryLayout(Path("."), name)
        present: set[str] = set()
        for model in layout.triton_models:
            present |= {f"{model}/{f}" for f in self._files_under(model)}
        required = {f"{m}/{CONFIG_FILENAME}" for m in layout.triton_models} | set(manifest.sha256)
        return [f"{self.uri}/{r} is missing" for r in sorted(required - present)]

    def export_repository(self) -> Path:
        return self._staging

    def publish(self, name: str) -> None:
        staged = EntryLayout(self._staging, name)
        if not staged.manifest_path.is_file():
            raise DestinationError(f"nothing staged for {name!r} at {staged.ensemble_dir}")
        manifest_object = self._path(name, MANIFEST_FILENAME)
        if self.fs.exists(manifest_object):
            self.fs.rm_file(manifest_object)  # the old entry is incomplete from now on
        for model in staged.triton_models:
            skip = {MANIFEST_FILENAME} if model == name else set()
            self._upload_folder(staged.model_dir(model), model, skip)
        self.fs.put_file(str(staged.manifest_path), manifest_object)
        log.info("published %s to %s", name, self.uri)
        for folder in staged.dirs:
            shutil.rmtree(folder, ignore_errors=True)

    def _upload_folder(self, local: Path, triton_model: str, skip: set[str]) -> None:
        wanted: dict[str, Path] = {}
        for path in sorted(local.rglob("*")):
            relative = path.relative_to(local).as_posix()
            if path.is_file():
                wanted[relative] = path
            elif path.is_dir() and not any(path.iterdir()):
                wanted[f"{relative}/{KEEP_FILENAME}"] = Path()
        stale = self._files_under(triton_model) - set(wanted) - skip
        for relative, path in wanted.items():
            if relative in skip:
                continue
            target = self._path(triton_model, relative)
            if path == Path():
                self.fs.pipe_file(target, b"")
            else:
                self.fs.put_file(str(path), target)
        for relative in sorted(stale):
            self.fs.rm_file(self._path(triton_model, relative))

    def close(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)
