"""The examples stay valid: the example catalog passes validation, and every `shoal build` in the
example CI workflow parses with the real command line."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import yaml

from shoal.catalog.schema import load_catalog
from shoal.cli import build_parser

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_example_catalog_is_valid(tmp_path: Path) -> None:
    catalog_path = tmp_path / "catalog.yaml"
    shutil.copy(EXAMPLES / "catalog.yaml", catalog_path)
    sources = re.findall(r"^\s+source: (\S+)", catalog_path.read_text(), flags=re.MULTILINE)
    for source in sources:
        (tmp_path / source).mkdir(parents=True)  # the CI workflow downloads them here
    catalog = load_catalog(catalog_path)
    assert [m.source for m in catalog.models] == [tmp_path / s for s in sources]
    assert {m.export.task for m in catalog.models} >= {"embed", "rerank", "colbert", "sparse"}


def _shoal_commands(workflow: dict) -> list[list[str]]:
    commands = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            if script.lstrip().startswith("shoal "):
                # Environment references become placeholders; the flags are what is checked.
                words = shlex.split(re.sub(r"\$\{?(\w+)\}?", r"PLACEHOLDER_\1", script))
                commands.append(words[1:])
    return commands


def test_the_example_workflow_runs_real_shoal_build_commands() -> None:
    workflow = yaml.safe_load((EXAMPLES / "github-actions" / "shoal-build.yaml").read_text())
    # PyYAML reads the bare key `on` as True (YAML 1.1); GitHub reads it as "on".
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers) == {"pull_request", "push"}
    commands = _shoal_commands(workflow)
    assert len(commands) == 2  # pull requests (local) and main (publish)
    parser = build_parser()
    repositories = []
    for words in commands:
        args = parser.parse_args(words)  # exits (fails the test) on an unknown flag
        assert args.command == "build"
        repositories.append(args.repository)
    assert repositories == [".shoal/repository", "PLACEHOLDER_REPOSITORY"]
    assert workflow["env"]["REPOSITORY"].startswith("s3://")
