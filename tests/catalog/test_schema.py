"""Catalog validation: every problem reported with its line, before anything is exported."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.catalog.schema import CatalogError, load_catalog, parse_catalog
from shoal.catalog.yaml_lines import load_located


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    return tmp_path


def problems(text: str, workdir: Path) -> list[tuple[int | None, str]]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, workdir / "catalog.yaml")
    return [(p.line, p.message) for p in caught.value.problems]


def test_a_valid_catalog_applies_defaults_and_resolves_sources(workdir: Path) -> None:
    text = """\
defaults:
  runtime: portable
  pool: cpu
  max_length: 128
models:
  - name: minilm
    source: ./a
    task: embed
    pinned: true
    prefixes: {query: "query: ", document: "passage: "}
  - name: reranker
    source: b
    task: rerank
    max_length: 256
    gpuClass: a100
    memory: 2Gi
    instance_count: 2
"""
    catalog = parse_catalog(text, workdir / "catalog.yaml", namespace="ml")
    minilm, reranker = catalog.models
    assert minilm.source == workdir / "a"
    assert minilm.line == 6
    assert minilm.export.max_length == 128 and minilm.export.runtime == "portable"
    assert minilm.export.query_prefix == "query: "
    assert minilm.placement == {"pool": "cpu", "pinned": True}
    assert minilm.namespace == "ml"
    # A model's own target replaces the default one instead of clashing with it.
    assert reranker.placement == {"gpuClass": "a100", "memory": "2Gi"}
    assert reranker.export.max_length == 256
    assert reranker.export.entry.instance_count == 2


def test_a_typo_names_its_line_and_the_closest_key(workdir: Path) -> None:
    text = "models:\n  - name: m\n    source: a\n    pool: cpu\n    taks: embed\n"
    assert problems(text, workdir) == [(5, "unknown key 'taks' in model 'm'; did you mean 'task'?")]


def test_an_unknown_task_lists_the_valid_ones(workdir: Path) -> None:
    text = "models:\n  - name: m\n    source: a\n    pool: cpu\n    task: embedding\n"
    [(line, message)] = problems(text, workdir)
    assert line == 5
    assert "'embedding' is not one of: embed, rerank, colbert, sparse, multi" in message


def test_a_duplicate_name_points_at_both_lines(workdir: Path) -> None:
    text = """\
defaults: {pool: cpu}
models:
  - name: m
    source: a
  - name: m
    source: b
"""
    assert problems(text, workdir) == [
        (5, "duplicate model name 'm' (first on line 3); names must be unique: rename one")
    ]


def test_every_problem_is_reported_at_once(workdir: Path) -> None:
    text = """\
defaults:
  pool: cpu
  pinnned: true
models:
  - name: Bad_Name
    source: a
  - name: ok
    source: ./missing
    dtype: fp64
    opset: 99
    memory: 12Qi
    minReplicas: -1
  - name: both
    source: c
    gpuClass: t4
    pool: gpu
  - name: nosource
"""
    found = problems(text, workdir)
    lines = [line for line, _ in found]
    assert lines == sorted(lines)
    messages = "\n".join(f"{line}: {message}" for line, message in found)
    assert "3: unknown key 'pinnned' in defaults; did you mean 'pinned'?" in messages
    assert "5: name 'Bad_Name' is not valid" in messages
    assert "8: model 'ok': source './missing' is not a folder" in messages
    assert "9: dtype: 'fp64' is not one of: fp32, fp16, int8" in messages
    assert "10: opset: 99 is above the maximum 21" in messages
    assert "11: memory: '12Qi': unknown suffix 'Qi'" in messages
    assert "12: minReplicas: -1 is below the minimum 0" in messages
    assert "13: model 'both' needs exactly one of pool" in messages
    assert "17: model 'nosource' has no source" in messages


def test_yaml_syntax_errors_name_the_line(workdir: Path) -> None:
    text = "models:\n  - name: m\n    source: [a\n    pool: cpu\n"
    [(line, message)] = problems(text, workdir)
    assert line == 4
    assert message.startswith("not valid YAML")


def test_a_key_given_twice_is_reported(workdir: Path) -> None:
    text = "models:\n  - name: m\n    source: a\n    pool: cpu\n    task: embed\n    task: rerank\n"
    assert problems(text, workdir) == [
        (6, "models[0].task is given twice (first on line 5); keep one")
    ]


def test_options_the_exporter_rejects_are_reported_with_the_model_line(workdir: Path) -> None:
    text = "models:\n  - name: m\n    source: a\n    pool: cpu\n    preferred_batch_sizes: [0]\n"
    [(line, message)] = problems(text, workdir)
    assert line == 5
    assert "preferred_batch_sizes" in message


def test_name_and_source_cannot_be_defaults_and_top_level_typos_are_caught(workdir: Path) -> None:
    text = "defualts: {}\ndefaults: {source: a}\nmodels:\n  - {name: m, source: a, pool: p}\n"
    assert problems(text, workdir) == [
        (1, "unknown top-level key 'defualts'; did you mean 'defaults'?"),
        (2, "'source' cannot be a default: set it on each model"),
    ]


def test_an_empty_or_missing_catalog_says_what_is_expected(workdir: Path) -> None:
    assert "must be a mapping" in problems("", workdir)[0][1]
    assert "must be a non-empty list" in problems("models: []\n", workdir)[0][1]
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(workdir / "nope.yaml")


def test_the_error_message_lists_file_and_line(workdir: Path) -> None:
    text = "models:\n  - name: m\n    source: a\n    pool: cpu\n    taks: embed\n"
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, workdir / "catalog.yaml")
    assert f"{workdir / 'catalog.yaml'}:5: unknown key 'taks'" in str(caught.value)
    assert "nothing was exported" in str(caught.value)


def test_merge_keys_resolve_with_the_line_of_the_merged_value() -> None:
    document = load_located("base: &b\n  x: 1\nitem:\n  <<: *b\n  y: 2\n")
    assert document.value == {"base": {"x": 1}, "item": {"x": 1, "y": 2}}
    assert document.lines[("item", "x")] == 2
    assert document.lines[("item", "y")] == 5


def test_nested_aliases_that_expand_past_the_bound_are_refused_with_their_line(
    workdir: Path,
) -> None:
    laughs = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[level]
        laughs.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    text = "\n".join(laughs) + "\nmodels:\n  - name: x\n    source: a\n"
    ((line, message),) = problems(text, workdir)
    assert "expands to more than 100000 values" in message
    assert line is not None and line <= len(laughs)


@pytest.mark.parametrize(
    ("key", "value", "names"),
    [("score", "softmax", "score 'softmax'"), ("matryoshka", "3", "matryoshka")],
)
def test_new_export_keys_refuse_bad_values_with_the_model_line(
    workdir: Path, key: str, value: str, names: str
) -> None:
    text = f"models:\n  - name: m\n    source: a\n    pool: cpu\n    {key}: {value}\n"
    [(line, message)] = problems(text, workdir)
    assert line in (2, 5) and names in message, message
