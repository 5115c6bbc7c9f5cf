"""Bidirectional encoders used as dense embedders: BERT family (BERT, MiniLM, e5/bge/gte-base
style), XLM-RoBERTa, ModernBERT."""

from __future__ import annotations

from shoal.contract import Pooling
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import register


@register
class BertAdapter(Adapter):
    name = "bert"
    model_types = ("bert",)
    default_pooling = Pooling.MEAN
    token_type_ids = True


@register
class XlmRobertaAdapter(Adapter):
    name = "xlm-roberta"
    model_types = ("xlm-roberta",)
    default_pooling = Pooling.MEAN


@register
class ModernBertAdapter(Adapter):
    # Eager attention (the base default) is what keeps padded positions at parity: with sdpa the
    # exported graph differs on padded rows (ENVIRONMENT.md).
    name = "modernbert"
    model_types = ("modernbert",)
    default_pooling = Pooling.MEAN
