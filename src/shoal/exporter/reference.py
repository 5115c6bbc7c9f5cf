"""The PyTorch reference of parity checks, written apart from shoal.postprocessing on purpose: the
exported path pools padded numpy batches, the reference pools ONE unpadded text at a time in torch,
so a bug in either (padding, masking, pooling, truncation) shows up as a parity failure.

Each function returns the contract outputs of one text: EMBEDDING [D], SCORE [1],
SPARSE {token id: weight}, COLBERT_VECTORS [n, D].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shoal.contract import OUTPUT_EMBEDDING, Pooling
from shoal.exporter.options import ExportPlan


def pool_one(hidden: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[T, H] states of one unpadded text -> [H]."""
    if pooling is Pooling.CLS:
        return hidden[0]
    if pooling is Pooling.LAST_TOKEN:
        return hidden[-1]
    if pooling is Pooling.MEAN:
        return hidden.mean(dim=0)
    if pooling is Pooling.MAX:
        return hidden.max(dim=0).values
    raise ValueError(f"no reference pooling for {pooling!r}")


def dense_outputs(
    hidden: torch.Tensor, plan: ExportPlan, dense: Sequence[torch.nn.Module] = ()
) -> dict[str, Any]:
    """Pooled, then through the Dense modules (sentence-transformers' order: the exported graph
    applies them before pooling), truncated, normalized."""
    assert plan.pooling is not None
    vector = pool_one(hidden, plan.pooling)
    for layer in dense:
        vector = layer(vector)
    if plan.dims:
        vector = vector[: plan.dims]
    if plan.normalize:
        vector = torch.nn.functional.normalize(vector, dim=-1)
    return {OUTPUT_EMBEDDING: vector.detach().double().numpy()}


def sparse_terms(
    token_ids: torch.Tensor, weights: torch.Tensor, special: list[int]
) -> dict[int, float]:
    """Max weight per token id of one text, without special tokens or zero weights."""
    terms: dict[int, float] = {}
    for token, weight in zip(token_ids.tolist(), weights.tolist(), strict=True):
        if token in special or weight <= 0:
            continue
        terms[token] = max(weight, terms.get(token, 0.0))
    return terms


def normalized_rows(vectors: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(vectors, dim=-1).detach().double().numpy()
