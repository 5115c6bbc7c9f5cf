"""The catalog file: what its keys mean, and validation of the whole file before anything runs.

Called by `shoal build` (cli.py) first. `load_catalog` reads the YAML, checks every model and returns
a `Catalog`, or raises `CatalogError` listing every problem with its line (never only the first),
so one CI run shows everything to fix. Nothing heavy is imported: no torch.

    defaults:              # optional: any model key except name and source
      runtime: portable
      pool: cpu
    models:
      - name: minilm                       # Kubernetes + Triton name
        source: ./checkpoints/minilm       # local Hugging Face folder, relative to the catalog
        task: embed
        max_length: 256
        pinned: true

Export keys are spelled as `shoal export`'s options (snake_case); placement keys are copied into the
`InferenceModel` spec and spelled as there (camelCase), and checked against the operator's CRD
schema. Reference: docs/catalog.md.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from shoal.catalog.yaml_lines import LocatedDocument, YamlSyntaxError, load_located
from shoal.contract import (
    MODEL_NAME_MAX_LENGTH,
    Aggregation,
    Dtype,
    Pooling,
    Runtime,
    Task,
    model_name_problem,
)
from shoal.exporter.options import ExportOptions
from shoal.model_repository.entry import EntryOptions, GpuAccelerator, InstanceKind
from shoal.operator import crds
from shoal.sizes import SizeError, parse_size

# A model's name is both a Kubernetes resource name (InferenceModel metadata.name) and an entry
# name (shoal.contract.model_name_problem, the rule every command shares); this is what both
# accept. "_" is out: Kubernetes refuses it.
NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
NAME_MAX_LENGTH = MODEL_NAME_MAX_LENGTH


def is_valid_name(name: object) -> bool:
    """Full match of both rules (a trailing newline is not a name)."""
    return (
        isinstance(name, str)
        and NAME_PATTERN.fullmatch(name) is not None
        and model_name_problem(name) is None
    )


NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # DNS-1123 label
NAMESPACE_MAX_LENGTH = 63


@dataclass(frozen=True)
class Choice:
    """One of an enum's values."""

    enum: type[Enum]


@dataclass(frozen=True)
class Integer:
    minimum: int | None = None
    maximum: int | None = None


class Boolean:
    pass


class Text:
    pass


@dataclass(frozen=True)
class IntegerList:
    minimum: int = 1


class Prefixes:
    """{query: "...", document: "..."}"""


Kind = Choice | Integer | Boolean | Text | IntegerList | Prefixes

# Export keys: catalog key -> (ExportOptions field, kind). `prefixes` maps to two fields.
EXPORT_KEYS: dict[str, Kind] = {
    "task": Choice(Task),
    "pooling": Choice(Pooling),
    "normalize": Boolean(),
    "max_length": Integer(2),
    "dims": Integer(1),
    "matryoshka": Boolean(),
    "aggregation": Choice(Aggregation),
    "instruction": Text(),
    "prompt_prefix": Text(),
    "prompt_suffix": Text(),
    "score": Text(),
    "dtype": Choice(Dtype),
    "runtime": Choice(Runtime),
    "max_batch_size": Integer(1),
    "opset": Integer(14, 21),
    "family": Text(),
    "optimize": Boolean(),
    "prefixes": Prefixes(),
}
# How Triton serves the entry (shoal.model_repository.entry.EntryOptions fields, same names).
SERVING_KEYS: dict[str, Kind] = {
    "instance_count": Integer(1),
    "instance_kind": Choice(InstanceKind),
    "gpu_accelerator": Choice(GpuAccelerator),
    "preferred_batch_sizes": IntegerList(1),
    "max_queue_delay_microseconds": Integer(0),
}
# Keys placed on the InferenceModel spec: the CRD's own properties (entry is always the name).
PLACEMENT_KEYS: dict[str, dict[str, Any]] = {
    key: schema
    for key, schema in crds.model_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]["properties"].items()
    if key != "entry"
}
TARGET_KEYS = ("pool", "gpuClass")  # exactly one, as the CRD's oneOf says
IDENTITY_KEYS = ("name", "source")
OTHER_KEYS = ("namespace",)
MODEL_KEYS = (*IDENTITY_KEYS, *EXPORT_KEYS, *SERVING_KEYS, *PLACEMENT_KEYS, *OTHER_KEYS)
DEFAULTS_KEYS = tuple(k for k in MODEL_KEYS if k not in IDENTITY_KEYS)
TOP_LEVEL_KEYS = ("defaults", "models")
PREFIX_KEYS = ("query", "document")


@dataclass(frozen=True)
class CatalogModel:
    """One model of the catalog, validated and with defaults applied."""

    name: str
    source: Path  # resolved against the catalog's folder
    line: int
    export: ExportOptions
    placement: dict[str, Any]  # InferenceModel spec fields (pool or gpuClass, pinned, memory...)
    namespace: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the merged catalog keys, as written
    source_as_written: str = ""  # for the manifest's annotation (paths of a CI runner mean little)


@dataclass(frozen=True)
class Catalog:
    path: Path
    models: list[CatalogModel]

    def model(self, name: str) -> CatalogModel:
        return next(m for m in self.models if m.name == name)


@dataclass(frozen=True, order=True)
class CatalogProblem:
    line: int | None
    message: str


class CatalogError(ValueError):
    """The catalog cannot be built as written; `problems` holds every reason with its line."""

    def __init__(self, path: Path, problems: list[CatalogProblem]) -> None:
        self.path = Path(path)
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.message))
        count = len(self.problems)
        lines = [f"{self.path}: {count} problem{'s' if count != 1 else ''}, nothing was exported:"]
        lines += [
            f"  {self.path}:{p.line}: {p.message}" if p.line else f"  {self.path}: {p.message}"
            for p in self.problems
        ]
        super().__init__("\n".join(lines))


def _suggest(key: object, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid keys: " + ", ".join(valid)


def _where(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Validator:
    def __init__(self, path: Path, document: LocatedDocument, namespace: str | None) -> None:
        self.path = path
        self.document = document
        self.default_namespace = namespace
        self.problems: list[CatalogProblem] = []

    def report(self, where: tuple[str | int, ...], message: str) -> None:
        self.problems.append(CatalogProblem(self.document.line_of(where), message))

    # ------------------------------------------------------------------ structure

    def validate(self) -> list[CatalogModel]:
        for key_path, first, again in self.document.duplicate_keys:
            self.problems.append(
                CatalogProblem(
                    again, f"{_where(key_path)} is given twice (first on line {first}); keep one"
                )
            )
        root = self.document.value
        if not isinstance(root, dict):
            self.report(
                (), "the catalog must be a mapping with a `models:` list (see docs/catalog.md)"
            )
            return []
        for key in root:
            if key not in TOP_LEVEL_KEYS:
                self.report(
                    (key,), f"unknown top-level key {key!r}; {_suggest(key, TOP_LEVEL_KEYS)}"
                )
        defaults = root.get("defaults") or {}
        if not isinstance(defaults, dict):
            self.report(("defaults",), "defaults must be a mapping of model keys")
            defaults = {}
        self._check_keys(defaults, ("defaults",), DEFAULTS_KEYS, "defaults")
        for key, value in defaults.items():
            if key in DEFAULTS_KEYS:
                self._check_value(key, value, ("defaults", key))
        models = root.get("models")
        if not isinstance(models, list) or not models:
            self.report(
                ("models",) if "models" in root else (), "`models:` must be a non-empty list"
            )
            return []
        result = []
        seen: dict[str, int | None] = {}
        for index, item in enumerate(models):
            where = ("models", index)
            if not isinstance(item, dict):
                self.report(
                    where, f"models[{index}] must be a mapping with at least name and source"
                )
                continue
            model = self._model(item, defaults, where)
            name = item.get("name")
            if is_valid_name(name):
                line = self.document.line_of((*where, "name"))
                if name in seen:
                    self.report(
                        (*where, "name"),
                        f"duplicate model name {name!r} (first on line {seen[name]}); "
                        "names must be unique: rename one",
                    )
                else:
                    seen[name] = line
            if model is not None:
                result.append(model)
        return result

    def _check_keys(
        self, mapping: dict, where: tuple[str | int, ...], valid: tuple[str, ...], what: str
    ) -> None:
        for key in mapping:
            if key in valid:
                continue
            if what == "defaults" and key in IDENTITY_KEYS:
                self.report((*where, key), f"{key!r} cannot be a default: set it on each model")
            else:
                self.report((*where, key), f"unknown key {key!r} in {what}; {_suggest(key, valid)}")

    # ------------------------------------------------------------------ one model

    def _model(
        self, item: dict, defaults: dict, where: tuple[str | int, ...]
    ) -> CatalogModel | None:
        before = len(self.problems)
        label = f"models[{where[-1]}]"
        name = item.get("name")
        if name is None:
            self.report(where, f"{label} has no name; add `name:`")
        elif not is_valid_name(name):
            self.report(
                (*where, "name"),
                f"name {name!r} is not valid: use lowercase letters, digits, '-' and '.', starting "
                f"and ending with a letter or digit, at most {NAME_MAX_LENGTH} characters "
                "(it names both the InferenceModel and the Triton model)",
            )
        else:
            label = f"model {name!r}"
        self._check_keys(item, where, MODEL_KEYS, label)
        source = self._source(item, where, label)
        merged = {k: v for k, v in defaults.items() if k in DEFAULTS_KEYS}
        if any(k in item for k in TARGET_KEYS):  # a model's own target replaces the default one
            for key in TARGET_KEYS:
                merged.pop(key, None)
        for key, value in item.items():
            if key in MODEL_KEYS and key not in IDENTITY_KEYS:
                merged[key] = value
                self._check_value(key, value, (*where, key))
        targets = [k for k in TARGET_KEYS if merged.get(k) is not None]
        if len(targets) != 1:
            given = " and ".join(targets) if targets else "neither"
            self.report(
                where,
                f"{label} needs exactly one of pool (an InferencePool name) or gpuClass, "
                f"here or in defaults; it has {given}",
            )
        if len(self.problems) > before:
            return None
        export = self._export_options(merged, where, label)
        if export is None:
            return None
        namespace = merged.get("namespace", self.default_namespace)
        placement = {k: merged[k] for k in PLACEMENT_KEYS if merged.get(k) is not None}
        return CatalogModel(
            name=name,
            source=source,
            line=self.document.line_of(where) or 0,
            export=export,
            placement=placement,
            namespace=namespace,
            settings=merged,
            source_as_written=str(item["source"]),
        )

    def _source(self, item: dict, where: tuple[str | int, ...], label: str) -> Path:
        source = item.get("source")
        if source is None:
            self.report(where, f"{label} has no source; add `source:` (a local model folder)")
            return Path()
        if not isinstance(source, str) or not source.strip():
            self.report((*where, "source"), f"{label}: source must be a folder path")
            return Path()
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = self.path.parent / path
        if not path.is_dir():
            self.report(
                (*where, "source"),
                f"{label}: source {source!r} is not a folder ({path.resolve()} does not exist); "
                "give a local Hugging Face model folder, relative to the catalog (download hub "
                "models first)",
            )
        return path

    def _export_options(
        self, merged: dict, where: tuple[str | int, ...], label: str
    ) -> ExportOptions | None:
        fields = {k: merged[k] for k in EXPORT_KEYS if k in merged and k != "prefixes"}
        prefixes = merged.get("prefixes") or {}
        serving = {k: merged[k] for k in SERVING_KEYS if k in merged}
        if "preferred_batch_sizes" in serving:
            serving["preferred_batch_sizes"] = tuple(serving["preferred_batch_sizes"])
        try:
            entry = EntryOptions(**serving)
            return ExportOptions(
                **fields,
                query_prefix=prefixes.get("query"),
                document_prefix=prefixes.get("document"),
                entry=entry,
            )
        except (ValueError, TypeError) as exc:
            self.report(where, f"{label}: {exc}")
            return None

    # ------------------------------------------------------------------ values

    def _check_value(self, key: str, value: Any, where: tuple[str | int, ...]) -> None:
        if key in EXPORT_KEYS or key in SERVING_KEYS:
            kind = EXPORT_KEYS.get(key) or SERVING_KEYS[key]
            problem = _kind_problem(kind, value)
        elif key in PLACEMENT_KEYS:
            problem = _crd_problem(key, PLACEMENT_KEYS[key], value)
        elif key == "namespace":
            problem = _namespace_problem(value)
        else:
            return
        if problem:
            self.report(where, f"{key}: {problem}")


def _kind_problem(kind: Kind, value: Any) -> str | None:
    if isinstance(kind, Choice):
        valid = [e.value for e in kind.enum]
        if value not in valid:
            hint = difflib.get_close_matches(str(value), valid, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            return f"{value!r} is not one of: {', '.join(valid)}{suggestion}"
    elif isinstance(kind, Integer):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not a whole number"
        if kind.minimum is not None and value < kind.minimum:
            return f"{value} is below the minimum {kind.minimum}"
        if kind.maximum is not None and value > kind.maximum:
            return f"{value} is above the maximum {kind.maximum}"
    elif isinstance(kind, Boolean):
        if not isinstance(value, bool):
            return f"{value!r} is not true or false"
    elif isinstance(kind, Text):
        if not isinstance(value, str) or not value:
            return f"{value!r} is not a non-empty string"
    elif isinstance(kind, IntegerList):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= kind.minimum for v in value
        ):
            return f"{value!r} is not a list of whole numbers >= {kind.minimum}"
    elif isinstance(kind, Prefixes):
        if not isinstance(value, dict):
            return "must be a mapping with `query:` and/or `document:` prefixes"
        unknown = [k for k in value if k not in PREFIX_KEYS]
        if unknown:
            return f"unknown prefix {unknown[0]!r}; {_suggest(unknown[0], PREFIX_KEYS)}"
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        if bad:
            return f"the {bad[0]} prefix must be a string"
    return None


def _crd_problem(key: str, schema: dict[str, Any], value: Any) -> str | None:
    """Check a value against its property in the operator's CRD schema (the subset it uses)."""
    if "anyOf" in schema:  # int-or-string quantities
        if isinstance(value, bool) or not isinstance(value, int | str):
            return f"{value!r} is not a quantity (bytes, or e.g. '512Mi', '2Gi')"
        try:
            size = parse_size(value, key)
        except SizeError as exc:
            return str(exc).removeprefix(f"{key}=")
        return None if size > 0 else f"{value!r} must be positive"
    expected = schema.get("type")
    if expected == "boolean" and not isinstance(value, bool):
        return f"{value!r} is not true or false"
    if expected == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not a whole number"
        if "minimum" in schema and value < schema["minimum"]:
            return f"{value} is below the minimum {schema['minimum']}"
    if expected == "string":
        if not isinstance(value, str) or not value:
            return f"{value!r} is not a non-empty string"
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            return f"{value!r} does not match {schema['pattern']}"
    return None


def _namespace_problem(value: Any) -> str | None:
    if (
        not isinstance(value, str)
        or not NAMESPACE_PATTERN.fullmatch(value)
        or len(value) > NAMESPACE_MAX_LENGTH
    ):
        return (
            f"{value!r} is not a Kubernetes namespace name (lowercase letters, digits and '-', "
            f"at most {NAMESPACE_MAX_LENGTH} characters)"
        )
    return None


def parse_catalog(text: str, path: Path, namespace: str | None = None) -> Catalog:
    """Validate catalog `text` (read from `path`, which anchors relative sources)."""
    path = Path(path)
    try:
        document = load_located(text)
    except YamlSyntaxError as exc:
        raise CatalogError(path, [CatalogProblem(exc.line, str(exc))]) from exc
    if namespace is not None and (problem := _namespace_problem(namespace)):
        raise CatalogError(path, [CatalogProblem(None, f"--namespace {problem}")])
    validator = _Validator(path, document, namespace)
    models = validator.validate()
    if validator.problems:
        raise CatalogError(path, validator.problems)
    return Catalog(path=path, models=models)


def load_catalog(path: Path, namespace: str | None = None) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CatalogError(path, [CatalogProblem(None, "the catalog file does not exist")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(path, [CatalogProblem(None, f"cannot read the catalog: {exc}")]) from exc
    return parse_catalog(text, path, namespace)
