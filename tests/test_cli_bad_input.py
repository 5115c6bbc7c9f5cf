"""Every subcommand of `shoal` against a table of malformed inputs: each ends with exit code 2, a
message that names the input, and no traceback. Each row runs `shoal` as a person would (a fresh
process, no stdin).

The fixtures are real broken things: a file where a folder belongs, manifests that are a list, not
UTF-8, with a hash key that climbs out of the entry; a catalog of nested aliases; a Python path on
which nvidia-pytriton does not import (as when the serve extra is missing).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.contract import Task
from tests.model_repository.sample_manifests import sample_manifest

TIMEOUT_S = 60


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    names: str  # what the message must contain: the input itself, or what is wrong with it
    env: str = ""  # "no-triton": nvidia-pytriton cannot be imported

    @property
    def id(self) -> str:
        return " ".join(self.args)[:80]


GOOD_CATALOG = "models:\n  - name: good\n    source: CKPT\n    pool: cpu\n"
BUILD = ("build", "{dir}/good.yaml", "--repository", "{dir}/out", "--manifests", "{dir}/m")

CASES = [
    # export: names, destinations, options
    Case(
        ("export", "{dir}/ckpt", "--name", "bad\nname", "--repository", "{dir}/r"), "'bad\\nname'"
    ),
    Case(("export", "{dir}/ckpt", "--name", "a__b", "--repository", "{dir}/r"), "'a__b'"),
    Case(("export", "{dir}/ckpt", "--name=-x", "--repository", "{dir}/r"), "'-x'"),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/afile"), "afile is a file"
    ),
    Case(("export", "{dir}/ckpt", "--name", "ok", "--repository", "ftp://h/p"), "ftp://h/p"),
    Case(("export", "{dir}/nope", "--name", "ok", "--repository", "{dir}/r"), "nope"),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--max-length", "x"),
        "'x'",
    ),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--dtype", "fp8"),
        "'fp8'",
    ),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--task", "chat"),
        "'chat'",
    ),
    Case(
        (
            "export",
            "{dir}/ckpt",
            "--name",
            "ok",
            "--repository",
            "{dir}/r",
            "--accelerator",
            "cuda",
        ),
        "--accelerator cuda applies to GPU instances: add --device gpu",
    ),  # fmt: skip
    Case(
        (
            "export",
            "{dir}/ckpt",
            "--name",
            "ok",
            "--repository",
            "{dir}/r",
            "--device",
            "gpu",
            "--accelerator",
            "tensorrt",
        ),
        "add --runtime onnxruntime",
    ),  # fmt: skip
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--instances", "0"),
        "--instances must be at least 1, got 0",
    ),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--device", "tpu"),
        "'tpu'",
    ),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--instances", "x"),
        "'x'",
    ),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--score", "soft"),
        "'soft'",
    ),
    Case(
        ("export", "{dir}/ckpt", "--name", "ok", "--repository", "{dir}/r", "--aggregation",
         "mean"),
        "'mean'",
    ),  # fmt: skip
    # verify: broken manifests, wrong places
    Case(("verify", "{dir}/repo/listy"), "listy/shoal.json: must be a JSON object, got a list"),
    Case(("verify", "{dir}/repo/latin1"), "latin1/shoal.json is not UTF-8"),
    Case(("verify", "{dir}/repo/climber"), "'../../etc/passwd' is not a plain relative path"),
    Case(("verify", "{dir}/repo/typed"), "field 'max_length' must be an integer, got \"64\""),
    Case(("verify", "s3://bucket/entry"), "s3://bucket/entry"),
    Case(("verify", "{dir}/afile"), "afile is a file"),
    # repo list / check
    Case(("repo", "list", "{dir}/afile"), "afile is a file"),
    Case(("repo", "list", "s3://bucket/models"), "s3://bucket/models"),
    Case(("repo", "check", "{dir}/nope"), "nope does not exist"),
    Case(("repo", "check", "gs://bucket/models"), "gs://bucket/models"),
    Case(("repo", "remove", "{dir}/repo"), "'remove'"),
    # serve
    Case(("serve", "{dir}/afile"), "afile is a file"),
    Case(("serve", "s3://bucket/models"), "s3://bucket/models"),
    Case(("serve", "{dir}/nope"), "nope does not exist"),
    Case(("serve", "{dir}/repo"), "listy/shoal.json: must be a JSON object"),
    Case(("serve", "{dir}/empty"), "nvidia-pytriton is not installed", env="no-triton"),
    Case(("serve", "{dir}/good-repo", "--memory-budget", "lots"), "'lots'"),
    Case(("serve", "{dir}/good-repo", "--load-timeout", "0"), "'0' must be more than 0 seconds"),
    Case(("serve", "{dir}/good-repo", "--load-timeout", "soon"), "'soon' is not a number"),
    Case(("serve", "{dir}/good-repo", "--memory-budget", "1.5m"), "'1.5m'"),
    Case(("serve", "{dir}/good-repo", "--http-port", "eighty"), "'eighty'"),
    Case(("serve", "{dir}/good-repo", "--grpc-port", "70000"), "'70000' is not a port number"),
    Case(("serve", "{dir}/good-repo", "--metrics-port", "-1"), "'-1' is not a port number"),
    Case(("serve", "{dir}/good-repo", "--policy", "random"), "'random'"),
    # quickstart
    Case(("quickstart", "--repository", "{dir}/afile"), "afile is a file"),
    Case(("quickstart", "--repository", "s3://bucket/q"), "s3://bucket/q"),
    # embed / rerank: nothing listens, or the options are wrong
    Case(("embed", "m", "hello", "--url", "http://127.0.0.1:9"), "127.0.0.1:9"),
    Case(("embed", "m", "hello", "--protocol", "ftp"), "'ftp'"),
    Case(("embed", "m", "hello", "--text-type", "poem"), "'poem'"),
    Case(("rerank", "m", "query"), "DOC"),
    Case(("rerank", "m", "q", "doc", "--load-timeout", "soon"), "'soon'"),
    # operator and router: argument checks
    Case(("operator", "run", "-A", "--drift-interval", "often"), "'often'"),
    Case(("operator", "run", "-A", "--drift-interval", "0"), "'0' must be a positive number"),
    Case(("operator", "run", "-A", "--metrics-port", "70000"), "'70000' is not a port"),
    Case(("operator", "run"), "--namespace"),
    Case(("operator", "dance"), "'dance'"),
    Case(("router", "run", "--http-port", "eighty"), "'eighty'"),
    Case(
        ("router", "run", "--repository", "{dir}/afile", "--replica", "http://127.0.0.1:9"), "afile"
    ),
    Case(("router", "run", "--event-loop", "trio"), "'trio'"),
    # build: catalogs, destinations, options
    Case(("build", "{dir}/laughs.yaml", *BUILD[2:]), "expands to more than 100000 values"),
    Case(("build", "{dir}/latin1.yaml", *BUILD[2:]), "latin1.yaml"),
    Case(("build", "{dir}/list.yaml", *BUILD[2:]), "must be a mapping with a `models:` list"),
    Case(("build", "{dir}/newline.yaml", *BUILD[2:]), "name 'x\\n' is not valid"),
    Case(("build", "{dir}/nope.yaml", *BUILD[2:]), "nope.yaml"),
    Case((*BUILD[:3], "{dir}/afile", *BUILD[4:]), "afile is a file"),
    Case((*BUILD[:3], "ftp://h/p", *BUILD[4:]), "scheme ftp:// is not supported"),
    Case((*BUILD[:5], "{dir}/afile"), "afile is a file"),
    Case((*BUILD, "--jobs", "0"), "--jobs must be >= 1, got 0"),
    Case((*BUILD, "--memory-budget", "lots"), "'lots'"),
    Case((*BUILD, "--storage-option", "novalue"), "'novalue'"),
    Case((*BUILD, "--storage-option", "k=v"), "--storage-option only applies"),
    Case((*BUILD, "--progress", "loud"), "'loud'"),
    # the top level
    Case(("launch",), "'launch'"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    (root / "afile").write_text("not a folder\n")
    (root / "empty").mkdir()
    (root / "ckpt").mkdir()
    (root / "ckpt" / "config.json").write_text('{"model_type": "bert"}')
    repo = root / "repo"
    manifest = json.loads(sample_manifest_json("listy"))
    for name, content in {
        "listy": b"[1, 2]",
        "latin1": '{"name": "caf\xe9"}'.encode("latin-1"),
        "climber": _json({**manifest, "name": "climber", "sha256": {"../../etc/passwd": "0" * 64}}),
        "typed": _json({**manifest, "name": "typed", "max_length": "64"}),
    }.items():
        (repo / name).mkdir(parents=True)
        (repo / name / "shoal.json").write_bytes(content)
    good = root / "good-repo" / "good"
    good.mkdir(parents=True)
    (good / "shoal.json").write_text(sample_manifest_json("good"))
    catalog = GOOD_CATALOG.replace("CKPT", str(root / "ckpt"))
    (root / "good.yaml").write_text(catalog)
    (root / "latin1.yaml").write_bytes(catalog.replace("good", "caf\xe9").encode("latin-1"))
    (root / "list.yaml").write_text("- models\n")
    (root / "newline.yaml").write_text(catalog.replace("name: good", 'name: "x\\n"'))
    laughs = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    laughs += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    (root / "laughs.yaml").write_text("\n".join(laughs) + "\n" + catalog)
    hidden = root / "no-triton" / "pytriton"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('nvidia-pytriton hidden by the test')\n")
    return root


def sample_manifest_json(name: str) -> str:
    return sample_manifest(Task.EMBED, name=name).to_json()


def _json(data: dict) -> bytes:
    return json.dumps(data).encode()


def _run(case: Case, workdir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    paths = [str(Path(__file__).parents[1] / "src"), *sys.path]
    if case.env == "no-triton":
        paths.insert(0, str(workdir / "no-triton"))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("KUBECONFIG", None)
    env["HOME"] = str(workdir)  # no ~/.kube/config: the operator must not find a cluster
    args = [a.replace("{dir}", str(workdir)) for a in case.args]
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        cwd=workdir,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_one_clear_message_and_exit_code_2(case: Case, workdir: Path) -> None:
    result = _run(case, workdir)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    assert case.names.replace("{dir}", str(workdir)) in output, output


def test_the_table_covers_every_subcommand() -> None:
    """A new subcommand must get rows here: the table is checked against `shoal --help`."""
    from shoal.cli import build_parser

    listed = build_parser().format_help()
    commands = set(re.findall(r"^    (\w[\w-]*)\s", listed, flags=re.MULTILINE))
    covered = {c.args[0] for c in CASES}
    assert commands, listed
    assert commands <= covered, f"subcommands without bad-input rows: {commands - covered}"
