"""What the images run, without a registry or a Docker engine: the operator+router image's
extras (read from images/shoal/Dockerfile) installed into a clean venv from this checkout have no
torch or transformers, and `shoal operator run --help` / `shoal router run --help` work from it.
The venv is cached outside the checkout (shoal's cache directory), keyed by the requirements of
those extras in pyproject.toml, so reruns take seconds. The Triton image installs what the
python steps import."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from shoal.runtime.installation import cache_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
PYTHON = Path("/usr/bin/python3.11")  # Debian's, as scripts/setup-env.sh uses
STEPS = ROOT / "src" / "shoal" / "model_repository" / "steps"


def image_extras() -> str:
    dockerfile = (IMAGES / "shoal" / "Dockerfile").read_text()
    (extras,) = re.findall(r'pip install [^\n]*"\.\[([\w,]+)\]"', dockerfile)
    return extras


def image_venv(extras: str) -> Path:
    """A venv with `.[extras]` installed from this checkout, built again only when those
    requirements in pyproject.toml change."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        project["dependencies"],
        *(project["optional-dependencies"][e] for e in extras.split(",")),
    ]
    key = hashlib.sha256(json.dumps([extras, wanted]).encode()).hexdigest()
    venv = cache_dir() / "image-venvs" / key[:16]
    if (venv / "installed").is_file():
        return venv
    if not PYTHON.is_file():
        pytest.fail(f"{PYTHON} not found: run `bash scripts/setup-env.sh` (installs python3.11)")
    shutil.rmtree(venv, ignore_errors=True)  # an interrupted build: start over
    subprocess.run([str(PYTHON), "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{ROOT}[{extras}]"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    (venv / "installed").write_text(extras)
    return venv


def test_operator_router_image_has_no_torch_and_runs_both_commands():
    extras = image_extras()
    assert set(extras.split(",")) == {"operator", "router"}
    venv = image_venv(extras)
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True,
    ).stdout.lower()  # fmt: skip
    installed = {line.split("==")[0] for line in listing.splitlines()}
    assert {"kopf", "aiohttp", "grpcio", "shoal"} <= installed
    assert not installed & {"torch", "transformers", "sentence-transformers", "onnxruntime"}
    # The checkout's source on that dependency closure: what the image would run today.
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for command in (["operator", "run", "--help"], ["router", "run", "--help"]):
        run = subprocess.run(
            [str(venv / "bin" / "shoal"), *command], capture_output=True, text=True,
            env=environment, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "usage: shoal" in run.stdout
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sys, shoal.operator.handlers, shoal.router.cluster;"
         "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"],
        capture_output=True, text=True, env=environment, timeout=120,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"


def step_imports() -> set[str]:
    """Top-level modules the python-backend steps import (anywhere in the file, lazy imports
    included), and the shoal modules copied beside them import, beyond the standard library,
    Triton's own module and those copied modules themselves."""
    from shoal.model_repository import entry

    shipped = [
        getattr(entry, name) for name in dir(entry) if name.endswith("_MODULE") and name.isupper()
    ]
    shipped_beside = {module.rsplit(".", 1)[1] for module in shipped}
    sources = [*STEPS.glob("*.py"), *(ROOT / "src" / f"{m.replace('.', '/')}.py" for m in shipped)]
    modules: set[str] = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return (
        modules
        - set(sys.stdlib_module_names)
        - {"triton_python_backend_utils", "__future__"}
        - shipped_beside
    )


def test_triton_image_installs_what_the_steps_import():
    dockerfile = (IMAGES / "triton" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3$", dockerfile, re.M)
    packages = {p.split("==")[0] for p in re.findall(r'"([\w-]+==[\w.]+)"', dockerfile)}
    provides = {"onnxruntime-gpu": "onnxruntime", "pillow": "PIL"}
    modules = {provides.get(p, p) for p in packages}
    assert step_imports() <= modules, step_imports() - modules
