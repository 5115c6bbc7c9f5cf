"""Every example in README.md and docs/ runs, as written, or says in the doc why it cannot.

Each shell, Python and YAML block carries a marker on the line above it:
`<!-- doc-example: NAME -->` (run by a test below) or `<!-- doc-example: skip REASON -->`.
`test_every_example_is_run_or_says_why_not` fails on a block without one, so a new example is
either run here or explains itself.

The docs session does what a person following README.md does, offline: the download step (the
one skipped block of "Using it") is replaced by tiny random checkpoints in the folders it names
(and the packaged all-MiniLM-L6-v2 for `./minilm`, whose int8 export needs real weights); then
README's "Using it" block runs line by line in a network namespace (its own localhost, so the
documented ports 8000/8001 are free), with `shoal serve` started as "another terminal" and
waited for; then every example that calls the server (docs/tasks.md, docs/install.md) runs
against it, unchanged. The catalog example is planned by `shoal build --dry-run`; the
InferencePool and InferenceModel examples are accepted by the real kube-apiserver (server-side
dry run) and by the operator's own spec parsers.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^\s*<!-- doc-example: (?P<name>\S+)(?: (?P<reason>.+))? -->$")
FENCE = re.compile(r"^\s*```(?P<lang>\w*)\s*$")
EXAMPLE_LANGUAGES = {"bash", "sh", "python", "yaml"}
RUN_HERE = {
    "readme-using-it", "tasks-http", "tasks-grpc", "tasks-shell", "install-tritonclient",
    "install-openai", "gpu-export", "catalog-reference", "operator-pool", "operator-model",
    "serve-options", "python-api",
    "tasks-extract",  # run by tests/model_repository/test_triton_extract.py against its entry "ner"
    "tasks-extract-zero-shot",  # run by tests/model_repository/test_triton_gliner.py ("gliner")
    "tasks-image-text",  # run by tests/model_repository/test_triton_image_text.py ("clip")
    "lora-call",  # run by tests/model_repository/test_triton_lora.py against its entry "emb"
    "tasks-llm-rerank",  # run by tests/model_repository/test_triton_llm_rerank.py ("qwen-rerank")
}  # fmt: skip
# The folders README's download step fills, and what the docs session puts there instead.
CHECKPOINTS = {
    "bge-small-en": ("bert", {"max_position_embeddings": 512}),  # README exports max length 512
    "e5-small-v2": ("bert", {}),
    "ms-marco-MiniLM": ("reranker", {}),
    "splade-v3": ("splade", {}),
    "colbertv2": ("colbert", {}),
}
SERVE_READY_S = 300

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@dataclass(frozen=True)
class Example:
    file: Path
    line: int
    language: str
    text: str
    name: str | None
    reason: str | None

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            fence = FENCE.match(lines[index])
            if not fence:
                index += 1
                continue
            start, body = index, []
            index += 1
            while index < len(lines) and not FENCE.match(lines[index]):
                body.append(lines[index])
                index += 1
            index += 1  # the closing fence
            marker = MARKER.match(lines[start - 1]) if start else None
            if fence["lang"] in EXAMPLE_LANGUAGES or marker:
                found.append(Example(
                    path, start + 1, fence["lang"], textwrap.dedent("\n".join(body)) + "\n",
                    marker["name"] if marker else None, marker["reason"] if marker else None,
                ))  # fmt: skip
    return found


def example(name: str) -> Example:
    (found,) = [e for e in examples() if e.name == name]
    return found


def run_example_against(name: str, http_address: str) -> str:
    """Python example `name`, as written but for the server's address (the docs say
    127.0.0.1:8000), run in a fresh interpreter; asserts it succeeds and returns its stdout."""
    text = example(name).text
    script = text.replace("127.0.0.1:8000", http_address)
    assert script != text, f"example {name!r} does not call 127.0.0.1:8000"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_example_is_run_or_says_why_not() -> None:
    problems = []
    for found in examples():
        if found.name is None:
            problems.append(f"{found.where}: a {found.language} example without a marker")
        elif found.name == "skip" and not found.reason:
            problems.append(f"{found.where}: skipped without saying why")
        elif found.name not in RUN_HERE | {"skip"}:
            problems.append(f"{found.where}: {found.name!r} is run by no test")
    assert not problems, "\n".join(problems)
    named = sorted(e.name for e in examples() if e.name != "skip")
    assert named == sorted(RUN_HERE)  # each once
    skipped = [e for e in examples() if e.name == "skip"]
    print(f"{len(named)} examples run, {len(skipped)} skipped:")
    for found in skipped:
        print(f"  {found.where}: {found.reason}")


# ------------------------------------------------------------------------- the docs session


@dataclass
class Session:
    folder: Path  # where a person would have cloned and downloaded: the commands' cwd
    namespace: str  # network namespace of the session's localhost
    env: dict[str, str]
    after_serve: str = ""  # README's lines after `shoal serve`
    hosts: Any = None  # the NetnsHosts that made `namespace`, for more localhosts

    def run(self, script: str, language: str = "bash") -> subprocess.CompletedProcess[str]:
        command = ["bash", "-e", "-c", script] if language in ("bash", "sh") else [
            sys.executable, "-c", script
        ]  # fmt: skip
        done = subprocess.run(
            ["ip", "netns", "exec", self.namespace, *command],
            cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        return done


def _split_at_serve(script: str) -> tuple[str, str, str]:
    """(before, the `shoal serve` command, after): serve runs "in another terminal"."""
    lines = script.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("shoal serve ")]
    return "\n".join(lines[:at]), lines[at], "\n".join(lines[at + 1 :])


@pytest.fixture(scope="module")
def session(tiny_model, tmp_path_factory) -> Iterator[Session]:
    from shoal.runtime.quickstart import minilm_source
    from tests.support.netns import NetnsUnavailable, netns_hosts

    folder = tmp_path_factory.mktemp("docs-session")
    for name, (family, overrides) in CHECKPOINTS.items():
        shutil.copytree(tiny_model(family, **overrides), folder / name)
    shutil.copytree(minilm_source(), folder / "minilm")
    venv = Path(sys.executable).parent.parent
    (folder / ".venv").symlink_to(venv)  # README: `source .venv/bin/activate`
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    before, serve, after = _split_at_serve(example("readme-using-it").text)
    with contextlib.ExitStack() as stack:
        try:
            hosts = stack.enter_context(netns_hosts())
        except NetnsUnavailable as exc:
            pytest.fail(str(exc))
        docs = Session(folder, hosts.create().name, env, after_serve=after, hosts=hosts)
        docs.run(before)
        log = stack.enter_context(open(folder / "serve.log", "w"))
        server = subprocess.Popen(
            ["ip", "netns", "exec", docs.namespace, "bash", "-c",
             f"source .venv/bin/activate && exec {serve}"],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(_stop, server)
        _wait_until_serving(server, folder / "serve.log")
        yield docs


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _wait_until_serving(server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVE_READY_S
    while time.monotonic() < deadline:
        if "Ctrl-C" in log.read_text(errors="replace"):
            return
        if server.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"shoal serve did not start:\n{log.read_text(errors='replace')[-4000:]}")


def test_readme_using_it_runs_line_by_line(session) -> None:
    done = session.run("source .venv/bin/activate\n" + session.after_serve)
    embedding, *ranked = done.stdout.strip().splitlines()
    assert '"text": "what is a shoal?"' in embedding
    assert len(ranked) == 2  # score and text of each document, best first


@pytest.mark.parametrize("name", ["tasks-http", "tasks-grpc", "install-tritonclient"])
def test_tritonclient_examples_run_against_the_served_repository(session, name) -> None:
    session.run(example(name).text, "python")


def test_the_openai_and_rerank_example_runs_against_the_router(session) -> None:
    check = (
        "\nassert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0"
        "\nassert ranked['results'][0]['index'] in (0, 1), ranked"
    )
    session.run(example("install-openai").text + check, "python")


def test_the_shell_examples_of_the_tasks_page_run(session) -> None:
    done = session.run(example("tasks-shell").text)
    assert done.stdout.count('"embedding"') == 3  # two texts, then one over gRPC


def test_the_python_api_example_runs(session) -> None:
    done = session.run(example("python-api").text, "python")
    assert "embed" in done.stdout and "['bge-small']" in done.stdout


def test_the_serve_options_example_serves(session, tmp_path) -> None:
    """docs/serve.md's command on the README's repository, on its own localhost (the session's
    `shoal serve` holds 8000/8001 on the other)."""
    with open(tmp_path / "serve.log", "w") as log:
        other = Session(session.folder, session.hosts.create().name, session.env)
        server = subprocess.Popen(
            ["ip", "netns", "exec", other.namespace, "bash", "-c",
             f"source .venv/bin/activate && exec {example('serve-options').text.strip()}"],
            cwd=session.folder, env=session.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_until_serving(server, tmp_path / "serve.log")
            done = other.run('shoal embed bge-small "a pinned model answers"')
            assert '"embedding"' in done.stdout
        finally:
            _stop(server)
        assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]


def test_the_gpu_export_example_runs_without_a_gpu(session) -> None:
    session.run(example("gpu-export").text)
    config = (session.folder / "repository" / "bge-small__encode" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config and "tensorrt" in config


def test_the_catalog_example_plans(session) -> None:
    catalog = session.folder / "catalog.yaml"
    catalog.write_text(example("catalog-reference").text)
    (session.folder / "checkpoints").mkdir(exist_ok=True)
    (session.folder / "checkpoints" / "all-MiniLM-L6-v2").symlink_to(session.folder / "minilm")
    session.run(
        "shoal build catalog.yaml --repository planned --manifests planned-manifests --dry-run"
    )


def test_the_custom_resource_examples_are_accepted(kube_cluster) -> None:
    """The apiserver's server-side dry run checks them against the CRD schemas; the operator's
    parsers check what a schema cannot say."""
    from shoal.operator.specs import model_spec, pool_spec

    pool = yaml.safe_load(example("operator-pool").text)
    model = yaml.safe_load(example("operator-model").text)
    namespace = pool["metadata"]["namespace"]
    with kube_cluster.http() as http:
        created = http.post(
            "/api/v1/namespaces",
            json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
        assert created.status_code in (201, 409), created.text
        for body, plural in ((pool, "inferencepools"), (model, "inferencemodels")):
            path = f"/apis/shoal.dev/v1alpha1/namespaces/{namespace}/{plural}"
            answer = http.post(path, params={"dryRun": "All"}, json=body)
            assert answer.status_code == 201, answer.text
    pool_spec(pool["metadata"]["name"], namespace, pool["spec"])
    model_spec(model["metadata"]["name"], namespace, model["spec"])
