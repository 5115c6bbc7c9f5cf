"""`shoal build --repository s3://...` against a real S3 HTTP server on loopback (moto's server,
spoken to by s3fs/aiobotocore exactly as AWS or MinIO would be)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from shoal.catalog.publishing import DestinationError, RemoteRepository
from shoal.cli import main
from shoal.contract import Runtime
from shoal.manifest import Manifest
from shoal.model_repository.entry import EntryOptions, write_entry
from shoal.model_repository.layout import KEEP_FILENAME, EntryLayout
from shoal.model_repository.repository import check_repository
from tests.catalog.conftest import S3Server, copy_checkpoint

pytestmark = pytest.mark.slow

CATALOG = """\
defaults: {runtime: portable, pool: cpu, max_length: 32, max_batch_size: 4}
models:
  - name: alpha
    source: alpha
"""


def s3fs_for(server: S3Server):  # noqa: ANN201
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=server.endpoint, skip_instance_cache=True)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model, s3_server: str):  # noqa: ANN001, ANN201
    """One build of a one-model catalog into a fresh bucket."""
    root = tmp_path_factory.mktemp("s3-build")
    copy_checkpoint(tiny_model("bert"), root / "alpha")
    (root / "catalog.yaml").write_text(CATALOG)
    server = S3Server(s3_server, "published")
    s3fs_for(server).mkdir(server.bucket)
    uri = f"s3://{server.bucket}/models"
    code = build(root, uri, server)
    return root, server, uri, code


def build(root: Path, uri: str, server: S3Server, *extra: str) -> int:
    return main(
        [
            "build", str(root / "catalog.yaml"), "--repository", uri,
            "--manifests", str(root / "manifests"), "--progress", "plain",
            "--storage-option", f"endpoint_url={server.endpoint}", *extra,
        ]
    )  # fmt: skip


def test_a_published_entry_downloads_whole_and_passes_repo_check(published, tmp_path) -> None:
    root, server, uri, code = published
    assert code == 0
    fs = s3fs_for(server)
    keys = {k.removeprefix(f"{server.bucket}/models/") for k in fs.find(f"{server.bucket}/models")}
    assert f"alpha/1/{KEEP_FILENAME}" in keys  # Triton needs the ensemble's version folder
    assert "alpha/shoal.json" in keys and "alpha__encode/1/model.onnx" in keys
    local = tmp_path / "downloaded"
    fs.get(f"{server.bucket}/models/", str(local), recursive=True)
    assert [(r.name, r.problems) for r in check_repository(local)] == [("alpha", [])]
    resource = yaml.safe_load((root / "manifests" / "alpha.yaml").read_text())
    assert resource["metadata"]["annotations"]["shoal.dev/repository"] == uri


def test_a_second_build_skips_the_published_entry(published, capsys) -> None:
    root, server, uri, _ = published
    capsys.readouterr()
    assert build(root, uri, server) == 0
    assert "0 built, 1 skipped, 0 failed" in capsys.readouterr().out


def test_a_missing_remote_file_plans_a_rebuild(published, capsys) -> None:
    root, server, uri, _ = published
    fs = s3fs_for(server)
    onnx = f"{server.bucket}/models/alpha__encode/1/model.onnx"
    saved = fs.cat_file(onnx)
    fs.rm_file(onnx)
    try:
        capsys.readouterr()
        assert build(root, uri, server, "--dry-run") == 0
        out = capsys.readouterr().out
        assert "alpha: build (entry broken: " in out
        assert "alpha__encode/1/model.onnx is missing" in out
    finally:
        fs.pipe_file(onnx, saved)


def test_republishing_writes_the_next_version_and_deletes_the_previous_one(
    published, tmp_path
) -> None:
    """A second publish of the built entry (its files staged again as version 2): the new version
    in, the previous one and leftovers of older publishes out, the manifest last."""
    _, server, uri, _ = published
    fs = s3fs_for(server)
    base = f"{server.bucket}/models"
    fs.pipe_file(f"{base}/alpha__encode/7/stale.bin", b"from an interrupted publish")
    local = tmp_path / "downloaded"
    fs.get(f"{base}/", str(local), recursive=True)
    remote = RemoteRepository(uri, server.storage_options)
    try:
        assert remote.next_version("alpha") == 2
        manifest = Manifest.read(local / "alpha")
        staged = restage(local, remote.export_repository(), manifest, version=2)
        remote.publish("alpha")
    finally:
        remote.close()
    keys = {k.removeprefix(f"{base}/") for k in fs.find(base)}
    assert not any(k.split("/")[1] in ("1", "7") for k in keys if k.count("/") > 1), keys
    assert f"alpha/2/{KEEP_FILENAME}" in keys
    assert Manifest.parse(fs.cat_file(f"{base}/alpha/shoal.json"), "remote").version == 2
    assert staged.version == 2


def restage(local: Path, staging: Path, manifest: Manifest, version: int) -> Manifest:
    """The entry under `local` written again into `staging` as `version` (no export needed)."""
    layout = EntryLayout(local, manifest.name, manifest.version)
    options = EntryOptions(runtime=Runtime(manifest.runtime))
    new = dataclasses.replace(manifest, version=version)
    write_entry(staging, new, layout.onnx_path, layout.tokenizer_dir, options)
    return Manifest.read(staging / manifest.name)


def test_a_missing_bucket_fails_before_any_export(
    tmp_path: Path, tiny_model, s3_server, capsys
) -> None:
    copy_checkpoint(tiny_model("bert"), tmp_path / "alpha")
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    server = S3Server(s3_server, "no-such-bucket")
    assert build(tmp_path, "s3://no-such-bucket/models", server) == 2
    err = capsys.readouterr().err
    assert "the bucket does not exist" in err and "create it first" in err
    assert not (tmp_path / "manifests").exists()


def test_storage_options_are_refused_for_local_folders(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match="only applies to object-store"):
        from shoal.catalog.publishing import open_destination

        open_destination(str(tmp_path), {"endpoint_url": "http://x"})
    shutil.rmtree(tmp_path, ignore_errors=True)


def _stage_sample(remote: RemoteRepository, sources: Path, version: int, max_length: int) -> None:
    from shoal.contract import Task
    from tests.model_repository.entries import write_graph, write_tokenizer
    from tests.model_repository.sample_manifests import sample_manifest

    manifest = dataclasses.replace(
        sample_manifest(Task.EMBED, name="alpha"), version=version, max_length=max_length
    )
    manifest.extra["tokenization"]["max_length"] = max_length
    sources.mkdir(parents=True, exist_ok=True)
    graph = write_graph(manifest, sources / "model.onnx")
    tokenizer = write_tokenizer(sources / "tokenizer")
    write_entry(remote.export_repository(), manifest, graph, tokenizer, EntryOptions())


def _remote_state(fs, base: str, local: Path) -> tuple[int, list[str]]:  # noqa: ANN001
    """The version the bucket serves, after checking a download of it is whole."""
    shutil.rmtree(local, ignore_errors=True)
    fs.invalidate_cache()
    fs.get(f"{base}/", str(local), recursive=True)
    reports = check_repository(local)
    return Manifest.read(local / "alpha").version, [p for r in reports for p in r.problems]


@pytest.mark.parametrize("failure", [OSError, KeyboardInterrupt], ids=["error", "interrupt"])
def test_a_publish_failing_at_any_upload_leaves_the_previous_version_whole(
    s3_bucket: S3Server, tmp_path: Path, failure: type[BaseException]
) -> None:
    """Against the real S3 server: the upload of the new version fails (or is interrupted) at
    each of its object writes in turn; every time, the bucket still serves version 1, complete
    and unchanged. The failure is then in the removal of the old version: version 2 is served."""
    fs = s3fs_for(s3_bucket)
    uri, base = f"s3://{s3_bucket.bucket}/models", f"{s3_bucket.bucket}/models"
    remote = RemoteRepository(uri, s3_bucket.storage_options)
    try:
        _stage_sample(remote, tmp_path / "v1", 1, 64)
        remote.publish("alpha")
        assert _remote_state(fs, base, tmp_path / "check") == (1, [])
        writes = 0
        original_put = remote.fs.put_file
        while True:
            writes += 1
            version = remote.next_version("alpha")
            _stage_sample(remote, tmp_path / f"v{version}", version, 32)
            calls = []

            def put_file(*args, _original=original_put, _at=writes, _calls=calls, **kwargs):  # noqa: ANN002, ANN003, ANN202
                _calls.append(args[1])
                if len(_calls) == _at:
                    raise failure("injected")
                return _original(*args, **kwargs)

            remote.fs.put_file = put_file
            try:
                remote.publish("alpha")
            except (failure, DestinationError):
                pass
            else:
                break  # every upload of this publish passed: the failures were all tried
            finally:
                remote.fs.put_file = original_put
            assert _remote_state(fs, base, tmp_path / "check") == (1, []), (writes, calls[-1])
        assert writes > 15  # version files, four configs and the manifest were each a failure point
        assert _remote_state(fs, base, tmp_path / "check") == (version, [])

        # A failure in deleting the previous version: the new one is served already, whole.
        _stage_sample(remote, tmp_path / "last", remote.next_version("alpha"), 48)
        original_rm = remote.fs.rm_file

        def rm_file(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise failure("injected during cleanup")

        remote.fs.rm_file = rm_file
        with pytest.raises(failure):
            remote.publish("alpha")
        remote.fs.rm_file = original_rm
        assert _remote_state(fs, base, tmp_path / "check") == (version + 1, [])
    finally:
        remote.close()
