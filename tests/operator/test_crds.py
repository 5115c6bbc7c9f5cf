"""The CRDs: one source in code, the shipped YAML equal to it, schemas structural for 1.20."""

from __future__ import annotations

import yaml

from shoal.operator import crds


def test_shipped_crd_files_equal_the_code_source():
    files = crds.shipped_files()
    assert len(files) == 4  # InferencePool, InferenceModel, kopf's two peering CRDs
    for path, text in files.items():
        assert path.is_file(), f"{path} missing: run `shoal operator crds --write`"
        assert path.read_text() == text, f"{path} is stale: run `shoal operator crds --write`"


def test_printed_crds_parse_back_to_the_source():
    documents = [yaml.safe_load(crds.render(crd)) for crd in crds.all_crds()]
    assert documents == crds.all_crds()


def _walk(schema, path="$"):
    yield path, schema
    for key in ("properties", "additionalProperties", "items"):
        child = schema.get(key)
        if isinstance(child, dict) and key == "properties":
            for name, sub in child.items():
                yield from _walk(sub, f"{path}.{name}")
        elif isinstance(child, dict):
            yield from _walk(child, f"{path}[{key}]")


def test_every_schema_node_is_structural():
    """Structural: each node has a type, or is int-or-string, or preserves unknown fields;
    one-of branches only say what is required (no types, no defaults)."""
    for crd in crds.all_crds():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            assert "type" in node or node.get("x-kubernetes-int-or-string"), path
            for branch in node.get("oneOf", []):
                assert set(branch) <= {"required"}, path
            assert "x-kubernetes-validations" not in node, f"{path}: CEL needs Kubernetes 1.25"


def test_crds_have_status_subresource_and_phase_column():
    for crd in crds.shoal_crds():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        assert columns["Phase"] == ".status.phase"
        assert columns["Age"] == ".metadata.creationTimestamp"


def test_cli_prints_the_crds_and_run_needs_a_scope(capsys):
    from shoal.cli import main

    assert main(["operator", "crds"]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in printed] == [
        c["metadata"]["name"] for c in crds.all_crds()
    ]
    assert main(["operator", "run"]) == 2
    assert "--namespace" in capsys.readouterr().err
