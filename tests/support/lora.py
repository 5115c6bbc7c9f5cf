"""A tiny BERT base with two PEFT LoRA adapters (different ranks and target modules), exported as
one entry, and PEFT's own numbers to compare with. Used by the exporter's and Triton's LoRA tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.support.tiny_models import build_tiny_lora_adapter

MAX_LENGTH = 32
# name -> build_tiny_lora_adapter options: rank, alpha, targets and seed all differ.
ADAPTERS: dict[str, dict[str, Any]] = {
    "legal": {"rank": 4, "alpha": 8.0, "target_modules": ("query", "value"), "seed": 1},
    "medical": {"rank": 8, "alpha": 4.0, "target_modules": ("query", "key", "dense"), "seed": 2},
}
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "fish",
    "",
    "Café naïve résumé, 東京は日本の首都です 🐟🚀 Москва",
    "A shoal of small fish moves as one through the reef. " * 6,  # > MAX_LENGTH tokens
]


def build_adapters(base: Path, root: Path) -> dict[str, Path]:
    return {
        name: build_tiny_lora_adapter(base, root / name, **options)
        for name, options in ADAPTERS.items()
    }


def export_with_adapters(base: Path, adapters: dict[str, Path], repository: Path, name: str):
    from shoal.exporter import ExportOptions, export_model
    from shoal.model_repository.entry import EntryOptions

    options = ExportOptions(
        max_length=MAX_LENGTH,
        adapters=tuple((n, str(p)) for n, p in adapters.items()),
        entry=EntryOptions(encode_threads=1, max_queue_delay_microseconds=50_000),
    )
    return export_model(base, name, repository, options)


def peft_embeddings(base: Path, adapter: Path | None, texts: list[str]) -> np.ndarray:
    """Mean-pooled, normalized vectors of PEFT's merged model (the base when `adapter` is None),
    one unpadded text at a time, truncated to MAX_LENGTH."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base))
    rows = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            hidden = model.eval()(**encoded).last_hidden_state[0]
            vector = hidden.mean(0)
            rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)
