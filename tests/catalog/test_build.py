"""`shoal build` end to end on tiny models (runtime portable): real exports in spawned processes,
skip by content hash, rebuild of only what changed, failures isolated, manifests applied to a real
kube-apiserver with the operator's CRDs.

One build of the catalog (module fixture) is shared; tests that change things work on copies.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from shoal.catalog.build import BuildOptions, run_build
from shoal.catalog.display import PlainProgress
from shoal.catalog.planning import Action
from shoal.cli import main
from shoal.model_repository.layout import EntryLayout
from shoal.model_repository.repository import check_repository, read_entry
from shoal.operator.crds import GROUP, MODEL_PLURAL, VERSION
from tests.catalog.conftest import copy_checkpoint

pytestmark = pytest.mark.slow

GOOD = ("alpha", "bravo", "charlie")

CATALOG = """\
defaults:
  runtime: portable
  pool: cpu
  max_length: 32
  max_batch_size: 4
models:
  - name: alpha
    source: checkpoints/alpha
    task: embed
    pinned: true
  - name: bravo
    source: checkpoints/bravo
    task: rerank
    priority: 2
  - name: charlie
    source: checkpoints/charlie
    pooling: cls
    gpuClass: cpu-small
  - name: corrupt
    source: checkpoints/corrupt
  - name: unsupported
    source: checkpoints/unsupported
"""


@dataclass
class Workspace:
    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.yaml"

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def build(self, *extra: str) -> int:
        return main(
            [
                "build", str(self.catalog), "--repository", str(self.repository),
                "--manifests", str(self.manifests), "--jobs", "2", "--progress", "plain", *extra,
            ]
        )  # fmt: skip

    def copy(self, destination: Path) -> Workspace:
        shutil.copytree(self.root, destination, symlinks=True)
        return Workspace(destination)


def _make_workspace(root: Path, tiny_model) -> Workspace:  # noqa: ANN001
    checkpoints = root / "checkpoints"
    copy_checkpoint(tiny_model("bert"), checkpoints / "alpha")
    copy_checkpoint(tiny_model("reranker"), checkpoints / "bravo")
    copy_checkpoint(tiny_model("bert"), checkpoints / "charlie")
    corrupt = copy_checkpoint(tiny_model("bert"), checkpoints / "corrupt")
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a truncated download
    unsupported = copy_checkpoint(tiny_model("bert"), checkpoints / "unsupported")
    config = json.loads((unsupported / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2Model"])
    (unsupported / "config.json").write_text(json.dumps(config))
    (root / "catalog.yaml").write_text(CATALOG)
    return Workspace(root)


@pytest.fixture(scope="module")
def first_build(tmp_path_factory: pytest.TempPathFactory, tiny_model):  # noqa: ANN001, ANN201
    workspace = _make_workspace(tmp_path_factory.mktemp("catalog-build"), tiny_model)
    code = workspace.build()
    return workspace, code


def test_good_models_are_built_and_failures_reported_with_a_non_zero_exit(
    first_build, capsys
) -> None:
    workspace, code = first_build
    assert code == 1  # two models failed
    reports = check_repository(workspace.repository)
    assert {r.name: r.problems for r in reports} == {name: [] for name in GOOD}
    assert sorted(p.stem for p in workspace.manifests.glob("*.yaml")) == list(GOOD)
    leftovers = [p.name for p in workspace.repository.iterdir() if not p.name.startswith(GOOD)]
    assert leftovers == []  # nothing of the failed models, no staging folders


def test_the_summary_names_each_failure(tmp_path: Path, first_build, capsys) -> None:
    workspace = first_build[0].copy(tmp_path / "w")
    assert workspace.build() == 1
    out = capsys.readouterr().out
    table, failures = out.split("\nfailures:\n")
    rows = {line.split()[0]: line for line in table.splitlines() if line.split()[:1]}
    assert rows["corrupt"].split()[1] == "failed"
    assert rows["unsupported"].split()[1] == "failed"
    failure = dict(
        line.strip().split(": ", 1) for line in failures.splitlines() if line.startswith("  ")
    )
    assert "model.safetensors is truncated or corrupt" in failure["corrupt"]
    assert "unsupported architecture" in failure["unsupported"]
    for name in GOOD:  # the second build of the same catalog exports nothing
        assert rows[name].split()[1] == "skipped", rows[name]
    assert "0 built, 3 skipped, 2 failed" in out


def test_changing_options_or_checkpoint_files_rebuilds_only_those_models(
    tmp_path: Path, first_build, capsys
) -> None:
    workspace = first_build[0].copy(tmp_path / "w")
    onnx_mtime = {
        name: EntryLayout(workspace.repository, name).onnx_path.stat().st_mtime_ns for name in GOOD
    }
    # charlie: an export option; bravo: a file of its checkpoint. alpha: unchanged.
    workspace.catalog.write_text(
        workspace.catalog.read_text().replace("    pooling: cls\n", "    pooling: mean\n")
    )
    config_path = workspace.root / "checkpoints/bravo/config.json"
    config = json.loads(config_path.read_text())
    config["shoal_test_note"] = "a changed checkpoint"
    config_path.write_text(json.dumps(config))
    capsys.readouterr()
    assert workspace.build() == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1]}
    assert rows["alpha"][1] == "skipped"
    assert rows["bravo"][1] == "built" and "inputs changed" in " ".join(rows["bravo"])
    assert rows["charlie"][1] == "built"
    entries = {name: read_entry(workspace.repository, name) for name in GOOD}
    after = {name: entry.layout.onnx_path.stat().st_mtime_ns for name, entry in entries.items()}
    versions = {name: entry.manifest.version for name, entry in entries.items()}
    assert versions == {"alpha": 1, "bravo": 2, "charlie": 2}  # a rebuild is the next version
    assert after["alpha"] == onnx_mtime["alpha"]
    assert after["bravo"] != onnx_mtime["bravo"] and after["charlie"] != onnx_mtime["charlie"]
    assert all(r.ok for r in check_repository(workspace.repository))
    manifest = json.loads((workspace.repository / "charlie" / "shoal.json").read_text())
    assert manifest["pooling"] == "mean"


def test_a_broken_entry_is_planned_for_rebuild(tmp_path: Path, first_build) -> None:
    workspace = first_build[0].copy(tmp_path / "w")
    EntryLayout(workspace.repository, "alpha").onnx_path.unlink()
    report = run_build(
        BuildOptions(
            workspace.catalog, str(workspace.repository), workspace.manifests, dry_run=True
        ),
        PlainProgress(open("/dev/null", "w")),  # noqa: SIM115
        open("/dev/null", "w"),  # noqa: SIM115
    )
    plans = {p.model.name: p for p in report.plans}
    assert plans["alpha"].action is Action.BUILD
    assert plans["alpha"].reason.startswith("entry broken: ")
    assert "model.onnx" in plans["alpha"].reason
    assert plans["bravo"].action is Action.SKIP and plans["charlie"].action is Action.SKIP
    assert plans["corrupt"].action is Action.FAIL


def test_an_invalid_catalog_exports_nothing(tmp_path: Path, first_build, capsys) -> None:
    workspace = first_build[0].copy(tmp_path / "w")
    shutil.rmtree(workspace.repository)
    workspace.catalog.write_text(
        workspace.catalog.read_text().replace("    task: rerank\n", "    taks: rerank\n")
    )
    assert workspace.build() == 2
    err = capsys.readouterr().err
    assert ":13: unknown key 'taks' in model 'bravo'; did you mean 'task'?" in err
    assert not workspace.repository.exists()


@pytest.mark.kube
def test_the_manifests_apply_to_a_kube_apiserver_with_the_operators_crds(
    first_build, kube_cluster
) -> None:
    workspace = first_build[0]
    namespace = "catalog-build"
    with kube_cluster.http() as http:
        http.post(
            "/api/v1/namespaces",
            json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        ).raise_for_status()
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{MODEL_PLURAL}"
        for path in sorted(workspace.manifests.glob("*.yaml")):
            resource = yaml.safe_load(path.read_text())
            response = http.post(base, json=resource)
            assert response.status_code == 201, f"{path.name}: {response.text}"
        stored = {item["metadata"]["name"]: item for item in http.get(base).json()["items"]}
    assert sorted(stored) == list(GOOD)
    alpha = stored["alpha"]["spec"]
    assert alpha["pool"] == "cpu" and alpha["pinned"] is True and alpha["entry"] == "alpha"
    manifest = json.loads((workspace.repository / "alpha" / "shoal.json").read_text())
    assert alpha["memory"] == manifest["memory_bytes"]
    assert stored["charlie"]["spec"]["gpuClass"] == "cpu-small"
    assert stored["bravo"]["spec"]["priority"] == 2
    annotations = stored["bravo"]["metadata"]["annotations"]
    assert annotations["shoal.dev/repository"] == str(workspace.repository.resolve())
