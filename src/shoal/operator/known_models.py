"""What placement knows of the models on one pool, from their InferenceModels (a kopf index).

Used by the model handlers (placement, move, deletion) and the pool status timer (budget
enforcement). An InferenceModel is indexed under every pool where it may hold memory: the pool it
is placed on, the pool it is moving to, and the pool it is moving away from until its old copy is
unloaded. Several InferenceModels may name one entry on one pool: they share one loaded copy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shoal.fleet.placer import KnownModel
from shoal.manifest import Manifest, ManifestError
from shoal.operator.specs import ModelSpec, PoolSpec, SpecError, model_spec

log = logging.getLogger(__name__)

PoolKey = tuple[str, str]  # (namespace, pool)


def index_entries(
    name: str, namespace: str, spec: dict[str, Any], status: dict[str, Any], uid: str | None
) -> dict[PoolKey, KnownModel]:
    """The kopf index value of one InferenceModel: its KnownModel under each pool it touches."""
    try:
        model = model_spec(name, namespace, spec)
    except SpecError:
        return {}
    memory = model.memory_override or status.get("memoryBytes")
    entries: dict[PoolKey, KnownModel] = {}
    moved_from = status.get("movedFrom") or {}
    if moved_from.get("pool"):
        old = dataclasses.replace(model, entry=moved_from.get("entry") or model.entry)
        entries[(namespace, moved_from["pool"])] = known(old, memory, uid)
    for pool in (status.get("pool"), model.pool):
        if pool:
            entries[(namespace, pool)] = known(model, memory, uid)
    return entries


def known(model: ModelSpec, memory: int | None, uid: str | None) -> KnownModel:
    return KnownModel(
        entry=model.entry,
        namespace=model.namespace,
        name=model.name,
        memory_bytes=memory,
        pinned=model.pinned,
        priority=model.priority,
        uid=uid,
        min_replicas=model.min_replicas,
    )


def users_of(entries: Iterable[KnownModel], entry: str, besides: str) -> list[str]:
    """InferenceModels other than `besides` that use `entry` on the pool."""
    return sorted({k.name for k in entries if k.entry == entry and k.name != besides})


def known_on_pool(entries: Iterable[KnownModel], pool: PoolSpec) -> dict[str, KnownModel]:
    """By entry, with every memory filled in. Models sharing an entry merge: the copy is
    pinned if any of them pins it, as protected as the highest priority, as large as the
    largest, on as many replicas as the most any of them wants. A model whose InferenceModel has not recorded its memory yet (created a moment
    ago) counts with its manifest, else the whole budget: placement never counts a loaded model
    as free."""
    merged: dict[str, KnownModel] = {}
    for info in entries:
        info = _with_memory(info, pool)
        seen = merged.get(info.entry)
        if seen is not None:
            info = dataclasses.replace(
                seen,
                pinned=seen.pinned or info.pinned,
                priority=max(seen.priority, info.priority),
                memory_bytes=max(seen.memory_bytes or 0, info.memory_bytes or 0),
                min_replicas=max(seen.min_replicas, info.min_replicas),
            )
        merged[info.entry] = info
    return merged


def _with_memory(info: KnownModel, pool: PoolSpec) -> KnownModel:
    if info.memory_bytes is not None:
        return info
    if pool.local_repository:
        try:
            memory = Manifest.read(Path(pool.local_repository) / info.entry).memory_bytes
            return dataclasses.replace(info, memory_bytes=memory)
        except ManifestError as exc:
            log.debug("memory of %s unknown, counted as the whole budget: %s", info.entry, exc)
    return dataclasses.replace(info, memory_bytes=pool.memory_per_replica)
