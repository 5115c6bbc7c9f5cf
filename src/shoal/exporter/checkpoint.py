"""A local Hugging Face checkpoint folder, checked before anything heavy runs.

Who calls it: `export_model` (first thing) and the adapters' detection. It reads only JSON and file
headers: a missing config.json, missing weights, a missing tokenizer.json or a truncated
safetensors file is reported here with the file's name and what to do, before torch loads anything.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from shoal.exporter.errors import ExportError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# A `gliner` package checkpoint: its config (with the encoder's inside) instead of config.json.
GLINER_CONFIG = "gliner_config.json"
GLINER_MODEL_TYPE = "gliner"
# Files that do not change what an export produces (the source hash skips them).
_UNHASHED_SUFFIXES = (".md", ".txt", ".png", ".jpg", ".gitattributes", ".lock")


@dataclass
class Checkpoint:
    """What shoal needs to know about a checkpoint folder, without loading the model."""

    path: Path
    config: dict[str, Any]
    files: list[str] = field(default_factory=list)  # relative paths of every file

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    def has(self, relative: str) -> bool:
        return (self.path / relative).is_file()

    def read_json(self, relative: str) -> dict[str, Any]:
        path = self.path / relative
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"{path} is not valid JSON ({exc}); restore the file") from exc
        return data if isinstance(data, dict) else {}

    @cached_property
    def sentence_transformers(self) -> SentenceTransformersConfig | None:
        return SentenceTransformersConfig.read(self)

    def content_sha256(self) -> str:
        """Hash of every file that affects an export (names and bytes), in a stable order."""
        digest = hashlib.sha256()
        for relative in self.files:
            if relative.endswith(_UNHASHED_SUFFIXES) or relative.startswith("."):
                continue
            digest.update(relative.encode() + b"\0")
            with open(self.path / relative, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
        return digest.hexdigest()


@dataclass(frozen=True)
class DenseModule:
    """A sentence-transformers Dense module after pooling (Stella-style projections)."""

    path: str  # its folder in the checkpoint, e.g. "2_Dense_1024"
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class SentenceTransformersConfig:
    """The parts of a sentence-transformers folder an export honours."""

    pooling: str | None  # shoal.contract.Pooling value
    normalize: bool
    max_seq_length: int | None
    prompts: dict[str, str]
    dense: tuple[DenseModule, ...] = ()  # after pooling, in order

    @classmethod
    def read(cls, checkpoint: Checkpoint) -> SentenceTransformersConfig | None:
        if not checkpoint.has("modules.json"):
            return None
        try:
            modules = json.loads((checkpoint.path / "modules.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(
                f"{checkpoint.path / 'modules.json'} is not valid JSON: {exc}"
            ) from exc
        types = {m.get("type", ""): m.get("path", "") for m in modules if isinstance(m, dict)}
        _refuse_unexported_modules(checkpoint, types)
        pooling = None
        pooling_path = types.get("sentence_transformers.models.Pooling")
        if pooling_path is not None:
            pooling = _st_pooling(checkpoint, pooling_path)
        bert_config = checkpoint.read_json("sentence_bert_config.json")
        st_config = checkpoint.read_json("config_sentence_transformers.json")
        prompts = {k: v for k, v in (st_config.get("prompts") or {}).items() if isinstance(v, str)}
        dense = tuple(
            _dense_module(checkpoint, m.get("path", ""))
            for m in modules
            if isinstance(m, dict) and str(m.get("type", "")).rsplit(".", 1)[-1] == "Dense"
        )
        return cls(
            pooling=pooling,
            normalize="sentence_transformers.models.Normalize" in types,
            max_seq_length=bert_config.get("max_seq_length"),
            prompts=prompts,
            dense=dense,
        )


# sentence-transformers modules an export reproduces (by class name); any other would be dropped,
# and the vectors would silently differ from the model's (a Dense projection, say).
_ST_EXPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# A Dense module is exported folded into the graph (projecting each token's state, which pooling
# then averages or selects): exact only for a linear module, so other activations are refused.
_LINEAR_ACTIVATIONS = ("torch.nn.modules.linear.Identity", "torch.nn.Identity", "Identity")


def _dense_module(checkpoint: Checkpoint, path: str) -> DenseModule:
    where = checkpoint.path / path / "config.json"
    config = checkpoint.read_json(f"{path}/config.json")
    try:
        in_features, out_features = int(config["in_features"]), int(config["out_features"])
    except (KeyError, TypeError, ValueError):
        raise ExportError(
            f"{where} has no integer in_features/out_features: restore the Dense module"
        ) from None
    activation = str(config.get("activation_function", "torch.nn.modules.linear.Identity"))
    if activation not in _LINEAR_ACTIVATIONS:
        raise ExportError(
            f"{where}: activation {activation}; shoal exports Dense modules without an "
            "activation (Identity) only"
        )
    return DenseModule(path, in_features, out_features, bool(config.get("bias", True)))


def _refuse_unexported_modules(checkpoint: Checkpoint, types: dict[str, str]) -> None:
    for module_type, path in types.items():
        if module_type.rsplit(".", 1)[-1] not in _ST_EXPORTED_MODULES:
            raise ExportError(
                f"{checkpoint.path / 'modules.json'} has a {module_type} module"
                f"{f' ({path})' if path else ''}, which shoal does not export: the exported "
                "vectors would differ from the model's. Supported sentence-transformers modules: "
                f"{', '.join(_ST_EXPORTED_MODULES)}"
            )


_ST_POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last-token",
}


def _st_pooling(checkpoint: Checkpoint, pooling_path: str) -> str:
    relative = f"{pooling_path}/config.json" if pooling_path else "config.json"
    config = checkpoint.read_json(relative)
    chosen = [mode for key, mode in _ST_POOLING_MODES.items() if config.get(key)]
    unsupported = [
        key
        for key in ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
        if config.get(key)
    ]
    if unsupported or len(chosen) != 1:
        raise ExportError(
            f"{checkpoint.path / relative} combines pooling modes {chosen + unsupported}; shoal "
            f"supports exactly one of {sorted(_ST_POOLING_MODES.values())} (pass --pooling to choose)"
        )
    return chosen[0]


def inspect_checkpoint(source: str | Path) -> Checkpoint:
    """Check that `source` is a complete local checkpoint folder and read its config."""
    path = Path(source)
    if not path.exists():
        raise ExportError(
            f"checkpoint {path} does not exist; give a local Hugging Face model folder "
            "(download it first where a hub is reachable, e.g. `huggingface-cli download`)"
        )
    if not path.is_dir():
        raise ExportError(f"checkpoint {path} is a file; give the model's folder")
    config_path = path / "config.json"
    if not config_path.is_file() and (path / GLINER_CONFIG).is_file():
        config_path = path / GLINER_CONFIG
    if not config_path.is_file():
        raise ExportError(f"{config_path} not found: {path} is not a Hugging Face model folder")
    files = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and ".git" not in p.parts
    )
    checkpoint = Checkpoint(path=path, config={}, files=files)
    checkpoint.config = checkpoint.read_json(config_path.name)
    if config_path.name == GLINER_CONFIG:
        checkpoint.config = gliner_config_view(checkpoint.config)
    if not checkpoint.model_type:
        raise ExportError(f"{config_path} has no model_type; is it a transformers config?")
    if not any(checkpoint.has(name) for name in WEIGHT_FILES):
        raise ExportError(
            f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)} "
            "(shoal reads safetensors or PyTorch weights)"
        )
    if not checkpoint.has("tokenizer.json"):
        raise ExportError(
            f"{path / 'tokenizer.json'} not found: shoal needs a fast tokenizer; create it with "
            "`AutoTokenizer.from_pretrained(folder).save_pretrained(folder)` where the slow "
            "tokenizer's files are"
        )
    for name in files:
        if name.endswith(".safetensors"):
            check_safetensors(path / name)
    return checkpoint


def gliner_config_view(gliner: dict[str, Any]) -> dict[str, Any]:
    """A GLiNER folder's config as shoal reads checkpoints: the encoder's settings (hidden size,
    layers, heads: what memory estimates and the optimizer use), model_type "gliner", and the
    whole gliner config under "gliner"."""
    encoder = gliner.get("encoder_config")
    return {
        **(encoder if isinstance(encoder, dict) else {}),
        "model_type": GLINER_MODEL_TYPE,
        "architectures": ["GLiNER"],
        "gliner": gliner,
    }


def check_safetensors(path: Path) -> None:
    """Fail clearly on a truncated or corrupt safetensors file (its header lists byte ranges)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > size - 8:
                raise ValueError(f"header length {header_length} exceeds the file size {size}")
            header = json.loads(handle.read(header_length))
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is corrupt ({exc}); download the checkpoint again") from exc
    if 8 + header_length + end != size:
        raise ExportError(
            f"{path} is truncated or corrupt: its header describes {8 + header_length + end} "
            f"bytes but the file has {size}; download the checkpoint again"
        )
