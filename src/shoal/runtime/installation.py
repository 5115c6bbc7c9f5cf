"""Finds the `tritonserver` binary that the `nvidia-pytriton` wheel bundles and makes its python
backend usable.

Used by `shoal.runtime.triton.TritonServer` (and so by `shoal serve`, `shoal quickstart` and the
tests). As installed, the wheel's `backends/python/` lacks `triton_python_backend_stub`, so every
python-backend load fails with "triton_python_backend_stub is not found". We copy the stub that
matches this interpreter next to the backend, or, when site-packages is read-only, build a private
backend directory under shoal's cache directory and point `--backend-directory` at it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"


class TritonNotInstalled(RuntimeError):
    """The Triton binary (from the `serve` extra) is missing or incomplete."""


@dataclass(frozen=True)
class TritonInstallation:
    binary: Path  # bin/tritonserver
    backend_directory: Path  # holds python/ with libtriton_python.so and the stub
    library_path: Path | None  # shared libraries the wheel ships beside the package
    python_env: Path  # the environment whose bin/ the python steps find packages through


def cache_dir() -> Path:
    """shoal's cache directory: $SHOAL_CACHE_DIR, else $XDG_CACHE_HOME/shoal, else ~/.cache/shoal."""
    if env := os.environ.get("SHOAL_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shoal"


def locate_triton() -> TritonInstallation:
    """The bundled Triton, with the python backend stub in place. Idempotent and safe to call from
    several processes at once (the stub is copied under a temporary name and renamed)."""
    try:
        import pytriton  # noqa: PLC0415 - optional dependency of the `serve` extra
    except ImportError as exc:
        raise TritonNotInstalled(
            "nvidia-pytriton is not installed; it bundles the tritonserver binary shoal runs. "
            "Install the serve extra: scripts/setup-env.sh serve (or pip install 'shoal[serve]')"
        ) from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    backends = root / "backends"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / STUB_NAME
    for needed in (binary, backends / "python" / "libtriton_python.so", stub):
        if not needed.exists():
            raise TritonNotInstalled(
                f"{needed} is missing from the nvidia-pytriton installation; reinstall it: "
                "pip install --force-reinstall nvidia-pytriton==0.7.0"
            )
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    return TritonInstallation(
        binary=binary,
        backend_directory=_backend_directory_with_stub(backends, stub),
        library_path=libs if libs.is_dir() else None,
        python_env=Path(sys.prefix),
    )


def _backend_directory_with_stub(backends: Path, stub: Path) -> Path:
    python_backend = backends / "python"
    if _same_file_content(stub, python_backend / STUB_NAME):
        return backends
    if os.access(python_backend, os.W_OK):
        _copy_atomically(stub, python_backend / STUB_NAME)
        log.info("installed the python backend stub into %s", python_backend)
        return backends
    # Read-only site-packages: a private copy of the backends directory, keyed by the stub's size
    # and mtime so that a reinstalled wheel gets a fresh copy.
    stat = stub.stat()
    private = cache_dir() / "triton-backends" / f"{stat.st_size}-{int(stat.st_mtime)}"
    private_python = private / "python"
    if not _same_file_content(stub, private_python / STUB_NAME):
        private_python.mkdir(parents=True, exist_ok=True)
        for item in python_backend.iterdir():
            if item.is_file():
                _copy_atomically(item, private_python / item.name)
        _copy_atomically(stub, private_python / STUB_NAME)
        log.info("%s is read-only: using a private python backend in %s", backends, private)
    return private


def _same_file_content(a: Path, b: Path) -> bool:
    if not b.exists() or a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def _copy_atomically(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
