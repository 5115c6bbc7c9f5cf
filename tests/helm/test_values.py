"""values.yaml, values.schema.json and the templates agree, both ways (no I/O beyond the files):
every value in values.yaml is typed by the schema and every schema value has a default there;
every schema value is used by a template, and every `.Values.x` a template uses is in the schema."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.support.helm import CHART

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
TEMPLATES = {p.name: p.read_text() for p in (CHART / "templates").glob("*")}


def schema_leaves(node: dict[str, Any], prefix: str = "") -> set[str]:
    """Paths of the values the schema types: objects with `properties` are walked into."""
    properties = node.get("properties")
    if node.get("type") != "object" or not properties:
        return {prefix}
    leaves: set[str] = set()
    for name, child in properties.items():
        leaves |= schema_leaves(child, f"{prefix}.{name}" if prefix else name)
    return leaves


def value_paths(node: Any, schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Paths of values.yaml, walked as deep as the schema has properties."""
    if not isinstance(node, dict) or not schema.get("properties"):
        return {prefix}
    paths: set[str] = set()
    for name, child in node.items():
        sub = schema["properties"].get(name, {})
        paths |= value_paths(child, sub, f"{prefix}.{name}" if prefix else name)
    return paths


def template_references() -> set[str]:
    """`.Values.a.b` as written, through `$x := .Values.a` aliases and through defines called
    with a part of .Values as their context (`include "shoal.placement" .Values.router`)."""
    text = "\n".join(TEMPLATES.values())
    alias_pattern = r"\$(\w+)\s*:=\s*\.Values((?:\.\w+)+)"
    include_pattern = r'include "([\w.]+)" \.Values((?:\.\w+)+)'
    # An alias's or a define's context is not a use of everything under it: its fields are.
    direct = re.sub(include_pattern, "", re.sub(alias_pattern, "", text))
    refs = set(re.findall(r"\.Values((?:\.\w+)+)", direct))
    for alias, target in re.findall(alias_pattern, text):
        refs |= {target + rest for rest in re.findall(rf"\${alias}((?:\.\w+)+)", text)}
    defines = dict(re.findall(r'define "([\w.]+)" -}}(.*?){{- end -}}', text, re.DOTALL))
    for name, target in re.findall(include_pattern, text):
        body = defines[name]
        refs |= {target + rest for rest in re.findall(r"(?<![\w$)])((?:\.\w+)+)", body)}
    return {ref.lstrip(".") for ref in refs}


def covers(reference: str, leaf: str) -> bool:
    """A template using `a.b` uses every value under it; using `a.b.c` uses the value `a.b`."""
    return leaf == reference or leaf.startswith(reference + ".") or reference.startswith(leaf + ".")


def test_every_value_is_typed_and_every_typed_value_has_a_default():
    leaves = schema_leaves(SCHEMA)
    paths = value_paths(VALUES, SCHEMA)
    assert paths - leaves == set(), "in values.yaml, not in values.schema.json"
    assert leaves - paths == set(), "in values.schema.json, without a default in values.yaml"


def test_every_value_is_used_and_every_used_value_is_typed():
    leaves, references = schema_leaves(SCHEMA), template_references()
    unused = {leaf for leaf in leaves if not any(covers(ref, leaf) for ref in references)}
    assert unused == set(), "values no template uses"
    untyped = {ref for ref in references if not any(covers(ref, leaf) for leaf in leaves)}
    assert untyped == set(), "templates use values the schema does not type"


def test_the_schema_refuses_unknown_keys_everywhere():
    def closed(node: dict[str, Any], path: str) -> list[str]:
        if node.get("type") != "object" or "properties" not in node:
            return []
        found = [] if node.get("additionalProperties") is False else [path or "(top)"]
        for name, child in node["properties"].items():
            found += closed(child, f"{path}.{name}")
        for child in [node.get("items")] if isinstance(node.get("items"), dict) else []:
            found += closed(child, f"{path}[]")
        return found

    assert closed(SCHEMA, "") == []
