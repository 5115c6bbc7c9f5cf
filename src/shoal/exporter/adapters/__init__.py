"""Architecture adapters, one small class per family (see base.py). Importing this package
registers every family; adding a family = one class with `@register` and its tiny test model."""

from __future__ import annotations

from shoal.exporter.adapters import (  # noqa: F401  (registration)
    decoders,
    encoders,
    gliner,
    heads,
    image_text,
    llm_rerankers,
)
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import ADAPTERS, detect_adapter, register, supported_families

__all__ = ["ADAPTERS", "Adapter", "detect_adapter", "register", "supported_families"]
