"""Decoder embedders (Qwen2, Qwen3 / Qwen3-Embedding style): last-token pooling, left padding,
an instruction prefix for queries (from config_sentence_transformers.json prompts)."""

from __future__ import annotations

from typing import Any

from shoal.contract import Pooling
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import register
from shoal.exporter.options import ExportPlan


class DecoderAdapter(Adapter):
    default_pooling = Pooling.LAST_TOKEN
    padding_side = "left"
    # Decoder embedders (gte-Qwen2, Qwen3-Embedding) ship as *ForCausalLM; the LM head is unused.
    heads = ("ForCausalLM",)

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import DecoderHiddenStates

        return self.projected(DecoderHiddenStates(model), plan)


@register
class Qwen2Adapter(DecoderAdapter):
    name = "qwen2"
    model_types = ("qwen2",)


@register
class Qwen3Adapter(DecoderAdapter):
    name = "qwen3"
    model_types = ("qwen3",)
