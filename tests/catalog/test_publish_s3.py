"""`shoal build --repository s3://...` against a real S3 HTTP server on loopback (moto's server,
spoken to by s3fs/aiobotocore exactly as AWS or MinIO would be)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from shoal.catalog.publishing import KEEP_FILENAME, DestinationError, RemoteRepository
from shoal.cli import main
from shoal.model_repository.layout import EntryLayout
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


def test_republishing_replaces_files_and_deletes_stale_ones(published, tmp_path) -> None:
    """publish() of a staged entry over an existing one: new bytes in, old extras out, manifest
    last. (Staged from a download of the published entry: no export needed.)"""
    _, server, uri, _ = published
    fs = s3fs_for(server)
    base = f"{server.bucket}/models"
    remote = RemoteRepository(uri, server.storage_options)
    try:
        staging = remote.export_repository()
        for model in EntryLayout(staging, "alpha").triton_models:
            fs.get(f"{base}/{model}/", str(staging / model), recursive=True)
        fs.pipe_file(f"{base}/alpha__encode/1/stale.bin", b"from an older export")
        (staging / "alpha" / "1" / KEEP_FILENAME).unlink()  # as an export leaves it: empty
        tokenizer = EntryLayout(staging, "alpha").tokenizer_dir / "tokenizer.json"
        tokenizer.write_text(tokenizer.read_text() + "\n")
        remote.publish("alpha")
    finally:
        remote.close()
    assert not fs.exists(f"{base}/alpha__encode/1/stale.bin")
    assert fs.exists(f"{base}/alpha/1/{KEEP_FILENAME}")
    assert fs.cat_file(f"{base}/alpha__tokenize/1/tokenizer/tokenizer.json").endswith(b"\n")


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
