"""Decoder embedders (Qwen2, Qwen3 / Qwen3-Embedding style): last-token pooling, left padding,
an instruction prefix for queries (from config_sentence_transformers.json prompts)."""

from __future__ import annotations

from typing import Any

import torch

from shoal.contract import Pooling
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import register
from shoal.exporter.options import ExportPlan
from shoal.postprocessing import GRAPH_HIDDEN_STATES


class DecoderHiddenStates(torch.nn.Module):
    """Positions count real tokens only (0 at each text's first token), so a left-padded text
    gets the same positions, and the same vector, as when it is alone: results never depend on
    which requests share a batch."""

    output_names = (GRAPH_HIDDEN_STATES,)

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state


class DecoderAdapter(Adapter):
    default_pooling = Pooling.LAST_TOKEN
    padding_side = "left"

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        return DecoderHiddenStates(model)


@register
class Qwen2Adapter(DecoderAdapter):
    name = "qwen2"
    model_types = ("qwen2",)


@register
class Qwen3Adapter(DecoderAdapter):
    name = "qwen3"
    model_types = ("qwen3",)
