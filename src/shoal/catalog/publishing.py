"""Where a build puts its entries: a local model repository, or an object store that Triton reads.

Called by `shoal build` (planning reads manifests here; execution exports into
`export_repository()` and then calls `publish`). Two kinds:

- `LocalRepository`: the exporter writes straight into the folder; its own staging and renames make
  each entry appear whole (shoal.model_repository.install).
- `RemoteRepository` (`s3://`, `gs://`): the exporter writes into a local staging folder, then the
  entry is uploaded through fsspec (s3fs / gcsfs, the `publish` extra), all or nothing. Each
  export is a new Triton version N (manifest.version; every config pins it). The new version's
  folders `<model>/N/` are uploaded first, beside the current version, which stays servable and
  complete (its configs and manifest still name its own version). The switch comes last: the four
  config.pbtxt (steps, then the ensemble) and then the manifest, with Ctrl-C/SIGTERM held until it
  is done, and the previous configs put back if an upload of the switch fails. Only then are the
  previous version's objects deleted. An interrupted publish leaves the previous version current;
  the next one removes the unused objects it left.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from shoal.contract import MANIFEST_FILENAME
from shoal.manifest import Manifest, ManifestError
from shoal.model_repository.install import signals_held
from shoal.model_repository.layout import EntryLayout

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

    def next_version(self, name: str) -> int | None:
        """The Triton version an export of `name` should write (None: the exporter decides)."""

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

    def next_version(self, name: str) -> int | None:
        return None  # the exporter reads the entry's manifest beside its own staging

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

    def next_version(self, name: str) -> int | None:
        manifest, _ = self.read_manifest(name)
        return manifest.version + 1 if manifest is not None else self._highest_version(name) + 1

    def _highest_version(self, name: str) -> int:
        """The highest version folder of any of the entry's models (0: none), so that a version
        left half-uploaded by an interrupted publish is never written over while in use."""
        versions = [0]
        for model in EntryLayout(Path("."), name).triton_models:
            versions += [
                int(f.split("/")[0]) for f in self._files_under(model) if f.split("/")[0].isdigit()
            ]
        return max(versions)

    def publish(self, name: str) -> None:
        staged_manifest = EntryLayout(self._staging, name).manifest_path
        if not staged_manifest.is_file():
            raise DestinationError(f"nothing staged for {name!r} at {staged_manifest.parent}")
        try:
            manifest = Manifest.read(staged_manifest.parent)
            staged = EntryLayout(self._staging, name, manifest.version)
            current, _ = self.read_manifest(name)
            if current is not None and current.version >= manifest.version:
                raise DestinationError(
                    f"{self.uri}/{name} is at version {current.version}, the staged entry at "
                    f"{manifest.version}: rebuild it (its version must be newer)"
                )
            self._upload_version(staged)
            self._switch(staged, current)
            log.info("published %s version %d to %s", name, manifest.version, self.uri)
            self._remove_other_versions(staged)
        finally:  # published or not, the staged copy is done with
            for folder in EntryLayout(self._staging, name).dirs:
                shutil.rmtree(folder, ignore_errors=True)

    def _upload_version(self, staged: EntryLayout) -> None:
        """Every file of the new version folders; nothing current refers to them yet."""
        for model in staged.triton_models:
            local = staged.version_dir(model)
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                relative = path.relative_to(staged.model_dir(model)).as_posix()
                self.fs.put_file(str(path), self._path(model, relative))

    def _switch(self, staged: EntryLayout, current: Manifest | None) -> None:
        """Configs (steps, then the ensemble), then the manifest; the previous ones are put back
        if an upload fails. Interrupts wait until the switch is whole either way."""
        objects = [
            *(
                (self._path(m, CONFIG_FILENAME), staged.model_dir(m) / CONFIG_FILENAME)
                for m in staged.triton_models
            ),
            (self._path(staged.model, MANIFEST_FILENAME), staged.manifest_path),
        ]
        previous = {target: self._read_or_none(target) for target, _ in objects} if current else {}
        with signals_held():
            done: list[str] = []
            try:
                for target, local in objects:
                    done.append(target)
                    self.fs.put_file(str(local), target)
            except BaseException as exc:
                self._restore(done, previous, exc)
                raise

    def _read_or_none(self, target: str) -> bytes | None:
        try:
            return self.fs.cat_file(target)
        except FileNotFoundError:
            return None

    def _restore(
        self, done: list[str], previous: dict[str, bytes | None], cause: BaseException
    ) -> None:
        log.warning(
            "publishing failed during the switch (%r): putting the previous configs back", cause
        )
        for target in reversed(done):
            old = previous.get(target)
            try:
                if old is None:
                    self.fs.rm_file(target)
                else:
                    self.fs.pipe_file(target, old)
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001 - object-store errors vary by backend
                raise DestinationError(
                    f"publishing failed ({cause!r}) and putting back {target} failed too ({exc!r}): "
                    f"rebuild with --force to publish a whole entry"
                ) from exc

    def _remove_other_versions(self, staged: EntryLayout) -> None:
        """Objects of the entry that the new version does not use (the previous version, leftovers
        of interrupted publishes)."""
        keep_top = {CONFIG_FILENAME, MANIFEST_FILENAME}
        for model in staged.triton_models:
            for relative in sorted(self._files_under(model)):
                first = relative.split("/")[0]
                if first != staged.version_folder and relative not in keep_top:
                    self.fs.rm_file(self._path(model, relative))

    def close(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)
