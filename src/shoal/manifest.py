"""The manifest written beside every exported model (REPO/<model>/shoal.json).

Written by the exporter, checked by `shoal repo check`, read by the local runtime and the operator
for placement (memory) and by the router for the tensor names. Pure data, no heavy imports.
Schema: docs/manifest.md. Bump MANIFEST_SCHEMA_VERSION on incompatible changes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.contract import (
    MANIFEST_FILENAME,
    MANIFEST_SCHEMA_VERSION,
    STEP_ENCODE,
    STEP_POSTPROCESS,
    STEP_TOKENIZE,
    Dtype,
    Runtime,
    Task,
    adapter_name_problem,
    model_name_problem,
    step_name,
)


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, or not of this schema."""


@dataclass
class TensorSpec:
    name: str
    dtype: str  # Triton dtype name without TYPE_ prefix: FP32, INT64, BYTES, ...
    dims: list[int]  # without the batch dimension; -1 = variable


@dataclass
class ParityResult:
    """Exported graph vs the PyTorch reference on the fixed probe set."""

    dtype: str
    metric: str  # "min_cosine" for vectors, "max_abs_diff" for scores/weights
    value: float
    threshold: float
    passed: bool
    details: dict[str, float] = field(default_factory=dict)  # per output / per probe figures
    output: str = ""  # the contract output compared (EMBEDDING, SCORE, ...)


@dataclass
class LoraAdapterSpec:
    """A PEFT LoRA adapter exported beside the base graph (docs/lora.md); requests name it in the
    optional ADAPTER input."""

    name: str
    file: str  # relative to the encode step's version folder: adapters/<name>.onnx_adapter
    source: str  # the PEFT adapter folder it came from
    rank: int
    alpha: float
    target_modules: list[str]  # module paths of the base that the adapter changes
    bytes: int  # size of the adapter file (placement counts it on top of the base)
    parity: list[ParityResult]  # the graph with this adapter vs PEFT's merged model


@dataclass
class Manifest:
    name: str
    source: str  # local folder or hub id the model came from
    architecture: str  # adapter family name, e.g. "bert", "xlm-roberta", "qwen2", "bge-m3"
    model_type: str  # Hugging Face config.model_type
    task: str  # shoal.contract.Task
    pooling: str | None  # shoal.contract.Pooling, for dense outputs
    normalize: bool
    max_length: int
    dims: int | None  # dense/ColBERT output width after Matryoshka truncation
    dtype: str  # shoal.contract.Dtype
    runtime: str  # shoal.contract.Runtime
    padding_side: str
    inputs: list[TensorSpec]  # what applications send (ensemble inputs)
    outputs: list[TensorSpec]  # what applications get (ensemble outputs)
    encoder_inputs: list[TensorSpec]  # ONNX graph inputs
    encoder_outputs: list[TensorSpec]  # ONNX graph outputs
    parameter_count: int
    weights_bytes: int  # size of the ONNX weights as stored
    memory_bytes: int  # weights + activations at max_batch_size x max_length (placement uses this)
    max_batch_size: int
    fused_attention: int  # attention blocks fused by onnxruntime's transformer optimizer
    onnx_opset: int
    sha256: dict[str, str]  # repository-relative path -> sha256 of every file Triton reads
    source_sha256: str  # content hash of the inputs (checkpoint files + export options)
    parity: list[ParityResult]
    prefixes: dict[str, str] = field(default_factory=dict)  # "query"/"document" -> text prefix
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific facts (markers, heads)
    versions: dict[str, str] = field(default_factory=dict)  # tool versions used to export
    version: int = 1  # the Triton version folder of all four models (a re-export adds one)
    adapters: list[LoraAdapterSpec] = field(default_factory=list)  # LoRA adapters (docs/lora.md)
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, entry_dir: Path) -> Path:
        path = Path(entry_dir) / MANIFEST_FILENAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        """`data` (parsed JSON) checked against the schema; ManifestError names `where` (the file)
        and the first field that does not fit."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: must be a JSON object, got {_json_type(data)}")
        version = data.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise ManifestError(
                f"{where}: schema_version {version!r} is not {MANIFEST_SCHEMA_VERSION}; "
                "re-export the model with this version of shoal"
            )
        manifest = _build(cls, data, where, "")
        problem = _semantic_problem(manifest)
        if problem:
            raise ManifestError(f"{where}: {problem}")
        return manifest

    @classmethod
    def read(cls, entry_dir: Path) -> Manifest:
        path = Path(entry_dir) / MANIFEST_FILENAME
        if not path.is_file():
            raise ManifestError(f"{path} not found: is {entry_dir} a shoal export?")
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ManifestError(f"{path} cannot be read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{path} is not UTF-8 text: {exc}") from exc
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str | bytes, where: str) -> Manifest:
        """A manifest from its JSON text (a file or an object-store object named `where`)."""
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            data = json.loads(text)
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{where} is not UTF-8 text: {exc}") from exc
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"{where} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, where)


# ------------------------------------------------------------------ schema checks
# The dataclasses above are the schema: each field's annotation says what JSON it accepts.


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return "any JSON value"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"an object of {_describe(typing.get_args(annotation)[1])}"
    if dataclasses.is_dataclass(annotation):
        return f"an object ({annotation.__name__})"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(
        annotation, "null" if annotation is type(None) else str(annotation)
    )


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _convert(value: Any, annotation: Any, where: str, field_path: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [a for a in options if a is not type(None)]
        return _convert(value, inner, where, field_path)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(annotation)
        return [_convert(v, item, where, f"{field_path}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(annotation)
        return {k: _convert(v, item, where, f"{field_path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return _build(annotation, value, where, f"{field_path}.")
    if origin is None and _fits(value, annotation):
        return float(value) if annotation is float else value
    shown = json.dumps(value)[:60] if not isinstance(value, dict | list) else _json_type(value)
    raise ManifestError(
        f"{where}: field {field_path!r} must be {_describe(annotation)}, got {shown}; "
        "re-export the model"
    )


def _build(cls: type, data: dict[str, Any], where: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ManifestError(f"{where}: unknown field {prefix}{unknown[0]!r}; re-export the model")
    values = {}
    for name, spec in fields.items():
        path = f"{prefix}{name}"
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{where}: field {path!r} is missing; re-export the model")
            continue
        values[name] = _convert(data[name], hints[name], where, path)
    return cls(**values)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _semantic_problem(manifest: Manifest) -> str | None:
    """What a well-typed manifest may still get wrong: enums, bounds, hash keys."""
    name_problem = model_name_problem(manifest.name)
    if name_problem:
        return f"field 'name': {name_problem}"
    for field_name, enum in (("task", Task), ("runtime", Runtime), ("dtype", Dtype)):
        value = getattr(manifest, field_name)
        if value not in {e.value for e in enum}:
            allowed = ", ".join(e.value for e in enum)
            return f"field {field_name!r} is {value!r}, not one of {allowed}"
    for field_name in ("max_length", "max_batch_size", "version"):
        if getattr(manifest, field_name) < 1:
            return f"field {field_name!r} must be >= 1, got {getattr(manifest, field_name)}"
    for field_name in ("memory_bytes", "weights_bytes", "parameter_count"):
        if getattr(manifest, field_name) < 0:
            return f"field {field_name!r} must be >= 0, got {getattr(manifest, field_name)}"
    problem = _adapters_problem(manifest.adapters)
    if problem:
        return problem
    for relative, digest in manifest.sha256.items():
        problem = hashed_path_problem(manifest.name, manifest.version, relative)
        if problem:
            return f"field 'sha256': {problem}"
        if not _SHA256.fullmatch(digest):
            return f"field 'sha256.{relative}' is not a sha256 hex digest"
    return None


def _adapters_problem(adapters: list[LoraAdapterSpec]) -> str | None:
    names = [adapter.name for adapter in adapters]
    for index, adapter in enumerate(adapters):
        problem = adapter_name_problem(adapter.name)
        if problem:
            return f"field 'adapters[{index}].name': {problem}"
        if adapter.file != f"adapters/{adapter.name}.onnx_adapter":
            return (
                f"field 'adapters[{index}].file' is {adapter.file!r}, not "
                f"'adapters/{adapter.name}.onnx_adapter'"
            )
        if names.count(adapter.name) > 1:
            return f"field 'adapters': adapter {adapter.name!r} is listed twice"
    return None


def hashed_path_problem(model: str, version: int, relative: str) -> str | None:
    """Why `relative` (a sha256 key) is not a file of entry `model`'s version `version`: keys are
    repository-relative POSIX paths inside one of the entry's four Triton models, never a path that
    climbs out (`..`), an absolute one, or one of another model."""
    parts = relative.split("/")
    if relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts):
        return f"{relative!r} is not a plain relative path inside the entry"
    folders = {
        model,
        *(step_name(model, s) for s in (STEP_TOKENIZE, STEP_ENCODE, STEP_POSTPROCESS)),
    }
    if len(parts) < 2 or parts[0] not in folders:
        return f"{relative!r} is outside the entry's folders ({', '.join(sorted(folders))})"
    if parts[1:] != ["config.pbtxt"] and parts[1] != str(version):
        return f"{relative!r} is outside the entry's version folder {version}"
    return None
