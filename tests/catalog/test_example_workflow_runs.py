"""The example CI workflow (examples/github-actions/shoal-build.yaml) runs as CI would: its shell
steps, in order, in a local folder laid out like a models repository, for a pull request and then
for a push to main (published to the real S3 server on loopback, the manifests committed and
pushed to a local bare remote).

Done by hand here, as GitHub would: the `uses:` steps (checkout, setup-python, caches, cloud
credentials, artifacts) and the two steps that need the network (installing shoal and torch, which
this test's environment already has; fetching checkpoints from the hub, replaced by a tiny
checkpoint copied to where the fetch step puts it). Every other `run:` step is executed with
`bash -e`, GitHub's shell, with the workflow's `env:` and the variables GitHub sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.catalog.conftest import copy_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "github-actions" / "shoal-build.yaml"
# `run:` steps this test does not execute, and why (a new step must be classified here).
NEEDS_NETWORK = {
    "Install shoal (CPU torch, exports need no GPU)": "installs from PyPI/GitHub: the test's "
    "environment has shoal and torch already",
    "Fetch checkpoints at their pinned revisions": "downloads from the hub: the test copies a "
    "tiny checkpoint to checkpoints/",
}
CATALOG = """\
defaults:
  max_length: 16
  pool: cpu
models:
  - name: tiny-embedder
    source: checkpoints/tiny-bert
    task: embed
"""


def _steps() -> tuple[dict, list[dict]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return workflow, workflow["jobs"]["build"]["steps"]


def _runs_on(step: dict, event: str) -> bool:
    condition = str(step.get("if", ""))
    if "github.event_name == 'pull_request'" in condition:
        return event == "pull_request"
    if "github.event_name == 'push'" in condition:
        return event == "push"
    return True


def _run_workflow(
    event: str, folder: Path, env: dict[str, str], overrides: dict[str, str] | None = None
) -> list[str]:
    """Every `run:` step of the workflow for `event`, in order, with the workflow's `env:`
    (`overrides` replace some of it); the names of those run."""
    workflow, steps = _steps()
    ran = []
    for step in steps:
        if "run" not in step or not _runs_on(step, event) or step["name"] in NEEDS_NETWORK:
            continue
        result = subprocess.run(
            ["bash", "-e", "-c", step["run"]],
            cwd=folder, env={**env, **workflow["env"], **(overrides or {})},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"step {step['name']!r}:\n{result.stdout}\n{result.stderr}"
        ran.append(step["name"])
    return ran


def test_every_run_step_is_executed_or_classified() -> None:
    _, steps = _steps()
    names = {s["name"] for s in steps if "run" in s}
    assert set(NEEDS_NETWORK) <= names  # the classification names real steps


def test_the_example_workflow_runs_for_a_pull_request_and_a_merge(
    tiny_model, tmp_path, s3_bucket
) -> None:
    folder = tmp_path / "models-repo"
    folder.mkdir()
    (folder / "catalog.yaml").write_text(CATALOG)
    (folder / "checkpoints.lock").write_text("# tiny test checkpoint, copied by the test\n")
    copy_checkpoint(tiny_model("bert"), folder / "checkpoints" / "tiny-bert")
    remote = tmp_path / "remote.git"
    git = ["git", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", "--bare", str(remote)], check=True)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "models"],
                    ["remote", "add", "origin", str(remote)], ["push", "-qu", "origin", "main"]):  # fmt: skip
        # (a branch tracking origin, as actions/checkout leaves it)
        subprocess.run(
            [*git, "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=folder, check=True
        )
    summary = tmp_path / "summary.md"
    base = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `shoal`
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_SHA": "0123456789abcdef",
    }

    ran = _run_workflow("pull_request", folder, base)
    assert ran == ["Validate, export and verify (pull requests; nothing is published)"]
    assert "tiny-embedder" in summary.read_text()
    manifests = list((folder / ".shoal" / "manifests").rglob("*.yaml"))
    assert [m.stem for m in manifests] == ["tiny-embedder"]

    summary.write_text("")
    published = f"s3://{s3_bucket.bucket}/repository"
    push = {**base, "AWS_ENDPOINT_URL": s3_bucket.endpoint}  # boto reads it: the loopback S3
    ran = _run_workflow("push", folder, push, {"REPOSITORY": published})
    assert ran == [
        "Build and publish (main)",
        "Commit the InferenceModel manifests (main; GitOps applies them)",
    ]
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_bucket.endpoint, skip_instance_cache=True)
    assert fs.exists(f"{s3_bucket.bucket}/repository/tiny-embedder/shoal.json")
    log = subprocess.run(
        ["git", "log", "--format=%s", "main"], cwd=remote, capture_output=True, text=True
    ).stdout
    assert log.splitlines()[0] == "shoal build: InferenceModel manifests for 0123456"
