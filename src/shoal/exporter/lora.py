"""PEFT LoRA adapters on one exported base graph (torch side).

Who calls it: shoal.exporter.export, when `--adapter NAME=PATH` is given, and verify_entry.

How an adapter reaches the graph: every Linear that some adapter targets gets a LoRA slot,
`y = base(x) + (x @ A) @ B`, with A [in, r] and B [r, out] left as overridable initializers of
the ONNX graph (zeros by default: the base model's numbers). Each adapter is written as a small
onnxruntime adapter file holding its own A and B (B with PEFT's scaling folded in); the encode step
activates one at run time (shoal.exporter.lora_graph). The parity reference of an adapter is
PEFT's own merged model (`merge_and_unload`) of the same base.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.exporter.errors import ExportError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# The graph's name of a slot's tensors: `lora.<module path>.A` / `.B` (also the adapter file's).
SLOT_PREFIX = "lora."
# What PEFT can save but a LoRA slot cannot apply: refused by name instead of dropped silently.
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora) rescales the merged weight, which an additive slot cannot do",
    "fan_in_fan_out": "fan_in_fan_out targets Conv1D layers (GPT-2 style), not Linear",
    "lora_bias": "lora_bias adds a bias to lora_B",
}


def slot_names(module_path: str) -> tuple[str, str]:
    return f"{SLOT_PREFIX}{module_path}.A", f"{SLOT_PREFIX}{module_path}.B"


@dataclass
class LoraWeights:
    """One PEFT adapter read onto the base model: its slot tensors (PEFT's merged model, the
    parity reference, is built when needed by `merged_model`: one copy of the base at a time)."""

    name: str
    source: Path
    rank: int
    alpha: float
    target_modules: list[str]
    tensors: dict[str, np.ndarray]  # slot name -> A [in, r] or B [r, out] (scaling folded in)


def _config_problem(config: Any) -> str | None:
    if str(getattr(config, "peft_type", "")) not in ("LORA", "PeftType.LORA"):
        return f"is a {getattr(config, 'peft_type', '?')} adapter; shoal exports LoRA adapters"
    for key, why in UNSUPPORTED.items():
        if getattr(config, key, False):
            return f"sets {key}: {why}"
    if getattr(config, "bias", "none") != "none":
        return f"trains biases (bias={config.bias!r}); only bias='none' adapters are supported"
    if getattr(config, "modules_to_save", None):
        return (
            f"saves whole modules {list(config.modules_to_save)} (modules_to_save, e.g. a new "
            "head); a LoRA slot can only add to the base's Linear layers"
        )
    return None


def read_adapter(base: Any, name: str, source: Path) -> LoraWeights:
    """PEFT's adapter at `source` applied to a copy of `base` (the model the family exports)."""
    from peft import PeftConfig
    from peft.tuners.lora import LoraLayer

    source = Path(source)
    where = f"adapter {name!r} ({source})"
    if not (source / ADAPTER_CONFIG).is_file():
        raise ExportError(
            f"{where}: no {ADAPTER_CONFIG}; give the folder PEFT's save_pretrained wrote"
        )
    try:
        config = PeftConfig.from_pretrained(str(source))
    except Exception as exc:  # noqa: BLE001  PEFT raises many kinds for a bad config
        raise ExportError(f"{where}: cannot read {ADAPTER_CONFIG}: {exc}") from exc
    problem = _config_problem(config)
    if problem:
        raise ExportError(f"{where} {problem}")
    peft_model = _peft_model(base, name, source, where)
    prefix = "base_model.model."
    tensors: dict[str, np.ndarray] = {}
    targets: list[str] = []
    for path, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or name not in module.lora_A:
            continue
        if not isinstance(module.lora_A[name], torch.nn.Linear):
            raise ExportError(f"{where} targets {path} ({type(module).__name__}), not a Linear")
        module_path = path.removeprefix(prefix)
        a, b = slot_names(module_path)
        with torch.no_grad():
            tensors[a] = module.lora_A[name].weight.T.contiguous().numpy().astype(np.float32)
            scaled = module.lora_B[name].weight.T * float(module.scaling[name])
            tensors[b] = scaled.contiguous().numpy().astype(np.float32)
        targets.append(module_path)
    _check_all_weights_used(where, source, targets)
    if not targets:
        raise ExportError(f"{where} targets none of {type(base).__name__}'s layers")
    return LoraWeights(
        name=name,
        source=source,
        rank=int(config.r),
        alpha=float(config.lora_alpha),
        target_modules=targets,
        tensors=tensors,
    )


def _peft_model(base: Any, name: str, source: Path, where: str) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(copy.deepcopy(base), str(source), adapter_name=name)
    except Exception as exc:  # noqa: BLE001  corrupt weights, shapes of another base model
        raise ExportError(
            f"{where}: PEFT cannot load it onto {type(base).__name__}: {exc}; is the weights "
            "file intact, and was the adapter trained on this base model?"
        ) from exc


def merged_model(base: Any, lora: LoraWeights) -> Any:
    """PEFT's own merge of the adapter into a copy of `base` (`merge_and_unload`): the parity
    reference of the adapter's file on the exported graph."""
    where = f"adapter {lora.name!r} ({lora.source})"
    return _peft_model(base, lora.name, lora.source, where).merge_and_unload().eval()


def _check_all_weights_used(where: str, source: Path, targets: list[str]) -> None:
    """PEFT injects slots by module name and only warns when the stored weights match none of
    them (an adapter trained on another class, e.g. BertForSequenceClassification, whose keys
    start with `bert.`, loaded into BertModel): every stored module must be a slot it filled."""
    from safetensors import safe_open

    weights = source / "adapter_model.safetensors"
    if not weights.is_file():
        return  # a .bin adapter: PEFT loaded it; the parity check still compares the numbers
    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())  # noqa: SIM118  (a safetensors handle, not a dict)
    stored = {
        key.removeprefix("base_model.model.").split(".lora_")[0]
        for key in keys
        if ".lora_A." in key or ".lora_B." in key
    }
    unmatched = sorted(stored - set(targets))
    if unmatched:
        raise ExportError(
            f"{where}: its weights for {unmatched[0]}"
            f"{f' (and {len(unmatched) - 1} more)' if len(unmatched) > 1 else ''} match no "
            "layer of the base model; was the adapter trained on another model (or head class)?"
        )


# ------------------------------------------------------------------ slots in the exported graph


class LoraSlot(torch.nn.Module):
    """A Linear plus `(x @ A) @ B`. A and B are distinct random values during the export, so that
    the exporter neither folds nor deduplicates them; lora_graph zeroes them in the graph."""

    def __init__(self, base: torch.nn.Linear, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        shape_a, shape_b = (base.in_features, rank), (rank, base.out_features)
        self.lora_a = torch.nn.Parameter(torch.randn(shape_a, generator=generator))
        self.lora_b = torch.nn.Parameter(torch.randn(shape_b, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + torch.matmul(torch.matmul(x, self.lora_a), self.lora_b)


def with_slots(model: Any, module_paths: list[str]) -> tuple[Any, dict[str, np.ndarray]]:
    """A copy of `model` with a LoRA slot on each module path, and the slots' export-time values
    by slot name (lora_graph finds them in the graph by value)."""
    slotted = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(20261130)
    values: dict[str, np.ndarray] = {}
    for path in module_paths:
        linear = slotted.get_submodule(path)
        if not isinstance(linear, torch.nn.Linear):
            raise ExportError(f"LoRA target {path} is a {type(linear).__name__}, not a Linear")
        slot = LoraSlot(linear, 1, generator)
        slotted.set_submodule(path, slot)
        a, b = slot_names(path)
        values[a] = slot.lora_a.detach().numpy().copy()
        values[b] = slot.lora_b.detach().numpy().copy()
    return slotted.eval(), values


def union_of_targets(adapters: list[LoraWeights]) -> list[str]:
    return sorted({path for adapter in adapters for path in adapter.target_modules})


def is_slot_parameter(name: str) -> bool:
    return name.endswith((".lora_a", ".lora_b"))
