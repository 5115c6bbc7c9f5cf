"""Where each file of a model-repository entry lives. The single source of these paths.

An entry for model M in repository R:

    R/M/config.pbtxt            ensemble (platform "ensemble"), and R/M/1/ (empty version dir)
    R/M/shoal.json              the manifest (shoal.manifest.Manifest)
    R/M__tokenize/              python backend: 1/model.py, 1/tokenizer/ (tokenizer.json, ...)
    R/M__encode/                1/model.onnx (onnxruntime backend) or + 1/model.py (portable)
    R/M__postprocess/           python backend: 1/model.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shoal.contract import (
    MANIFEST_FILENAME,
    STEP_ENCODE,
    STEP_POSTPROCESS,
    STEP_TOKENIZE,
    step_name,
)

# An empty file in the ensemble's version folder: object stores have no empty folders, and Triton
# needs that folder; written by every export, so it is hashed like every other file.
KEEP_FILENAME = ".shoal-keep"


@dataclass(frozen=True)
class EntryLayout:
    repository: Path
    model: str
    version: int = 1  # the Triton version folder all four models serve (manifest.version)

    @property
    def version_folder(self) -> str:
        return str(self.version)

    def version_dir(self, triton_model: str) -> Path:
        return self.model_dir(triton_model) / self.version_folder

    @property
    def step_names(self) -> dict[str, str]:
        return {s: step_name(self.model, s) for s in (STEP_TOKENIZE, STEP_ENCODE, STEP_POSTPROCESS)}

    @property
    def triton_models(self) -> list[str]:
        """Every Triton model of the entry, steps first, ensemble last (load order)."""
        return [*self.step_names.values(), self.model]

    def model_dir(self, triton_model: str) -> Path:
        return Path(self.repository) / triton_model

    @property
    def ensemble_dir(self) -> Path:
        return self.model_dir(self.model)

    @property
    def tokenize_dir(self) -> Path:
        return self.model_dir(self.step_names[STEP_TOKENIZE])

    @property
    def encode_dir(self) -> Path:
        return self.model_dir(self.step_names[STEP_ENCODE])

    @property
    def postprocess_dir(self) -> Path:
        return self.model_dir(self.step_names[STEP_POSTPROCESS])

    @property
    def manifest_path(self) -> Path:
        return self.ensemble_dir / MANIFEST_FILENAME

    @property
    def onnx_path(self) -> Path:
        return self.encode_dir / self.version_folder / "model.onnx"

    @property
    def tokenizer_dir(self) -> Path:
        return self.tokenize_dir / self.version_folder / "tokenizer"

    @property
    def dirs(self) -> list[Path]:
        return [self.model_dir(m) for m in self.triton_models]
