"""The manifest written beside every exported model (REPO/<model>/shoal.json).

Written by the exporter, checked by `shoal repo check`, read by the local runtime and the operator
for placement (memory) and by the router for the tensor names. Pure data, no heavy imports.
Schema: docs/manifest.md. Bump MANIFEST_SCHEMA_VERSION on incompatible changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.contract import MANIFEST_FILENAME, MANIFEST_SCHEMA_VERSION


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
    sha256: dict[str, str]  # relative path -> sha256 of the ONNX graph, tokenizer files
    source_sha256: str  # content hash of the inputs (checkpoint files + export options)
    parity: list[ParityResult]
    prefixes: dict[str, str] = field(default_factory=dict)  # "query"/"document" -> text prefix
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific facts (markers, heads)
    versions: dict[str, str] = field(default_factory=dict)  # tool versions used to export
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, entry_dir: Path) -> Path:
        path = Path(entry_dir) / MANIFEST_FILENAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {version!r} is not {MANIFEST_SCHEMA_VERSION}; "
                "re-export the model with this version of shoal"
            )
        try:
            data = dict(data)
            for key in ("inputs", "outputs", "encoder_inputs", "encoder_outputs"):
                data[key] = [TensorSpec(**t) for t in data[key]]
            data["parity"] = [ParityResult(**p) for p in data["parity"]]
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ManifestError(
                f"manifest does not match schema {MANIFEST_SCHEMA_VERSION}: {exc}"
            ) from exc

    @classmethod
    def read(cls, entry_dir: Path) -> Manifest:
        path = Path(entry_dir) / MANIFEST_FILENAME
        if not path.is_file():
            raise ManifestError(f"{path} not found: is {entry_dir} a shoal export?")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
