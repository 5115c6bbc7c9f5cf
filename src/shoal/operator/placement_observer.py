"""Status that follows the replicas within seconds, whatever changed them.

Registered with kopf by importing shoal.operator.handlers. The model handlers write a model's
status after their own loads and evictions; this observer catches what changes behind them: a
Triton that restarted empty, a model unloaded by hand, a pod that left the pool's endpoints. Every
OBSERVE_INTERVAL_S each pool's ready replicas are asked which models are READY (one repository
index call each), and a model whose `status.replicas` no longer says where it is READY, or that
shows `Ready` below its wanted replica count, gets the observed replicas written at once, and is
then placed again as its drift timer would (model_handlers.refresh: loads where it fits, evicts
nothing), which decides its phase and conditions and brings a restarted replica's models back. The router routes by that status.

A model whose placement is under way is left to the handler doing it. A mismatch that a refresh
cannot resolve (a replica that answers but cannot load) is acted on once, not every interval: the
observer remembers what it last refreshed for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from shoal.fleet.replica import Replica
from shoal.operator import model_handlers
from shoal.operator.crds import GROUP, MODEL_PLURAL, POOL_PLURAL, VERSION
from shoal.operator.outages import tolerates_api_outage
from shoal.operator.replicas import replica_addresses, replicas_from_endpoints
from shoal.operator.settings import OBSERVE_INTERVAL_S

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacedModel:
    """What a model's status says of its placement on one pool (a kopf index value)."""

    name: str
    entry: str
    replicas: tuple[str, ...]
    addresses: tuple[tuple[tuple[str, str], ...], ...]
    ready: bool  # phase Ready
    min_replicas: int


@kopf.index(GROUP, VERSION, MODEL_PLURAL)
def inferencemodel_placed(
    name: str, namespace: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any
) -> dict[tuple[str, str], PlacedModel]:
    """Models by (namespace, pool they are placed on), as their status says."""
    pool, entry = status.get("pool"), status.get("entry")
    if not pool or not entry or meta.get("deletionTimestamp"):
        return {}
    min_replicas = spec.get("minReplicas", 1)
    return {
        (namespace, pool): PlacedModel(
            name=name,
            entry=entry,
            replicas=tuple(status.get("replicas") or ()),
            addresses=_frozen(status.get("replicaAddresses") or []),
            ready=status.get("phase") == "Ready",
            min_replicas=min_replicas if isinstance(min_replicas, int) else 1,
        )
    }


@kopf.timer(GROUP, VERSION, POOL_PLURAL, interval=OBSERVE_INTERVAL_S, initial_delay=1.0)
@tolerates_api_outage
async def inferencepool_observe(
    name: str,
    namespace: str,
    memo: kopf.Memo,
    inferencemodel_placed: kopf.Index,
    inferencemodel_by_pool: kopf.Index,
    inferencemodel_router_use: kopf.Index | None = None,
    **_: Any,
) -> None:
    placed = list(inferencemodel_placed.get((namespace, name), []))
    if not placed:
        return
    replicas = replicas_from_endpoints(await memo.kube.get_endpoints(namespace, name))
    ready, unreachable = await memo.placer.ready_models(replicas)
    refreshed: dict[tuple[str, str, str], Any] = memo.setdefault("observer_refreshed", {})
    current = {(namespace, name, model.name) for model in placed}
    for gone in [k for k in refreshed if k[:2] == (namespace, name) and k not in current]:
        del refreshed[gone]  # deleted or moved away: forget it
    for model in placed:
        if memo.placer.placing(namespace, model.entry):
            continue  # its handler writes the status when it is done
        seen = observed(model, replicas, ready, unreachable)
        key = (namespace, name, model.name)
        if seen == (model.replicas, model.addresses) and not _ready_below_wanted(
            model, len(seen[0]), len(replicas)
        ):
            refreshed.pop(key, None)
            continue
        if refreshed.get(key) == seen:
            continue  # refreshed for this very observation already; it did not change
        refreshed[key] = seen
        log.info(
            "%s/%s: READY on %s, status says %s: placing it again",
            namespace, model.name, list(seen[0]) or "-", list(model.replicas) or "-",
        )  # fmt: skip
        if seen != (model.replicas, model.addresses):
            # The truth first (the router stops sending there), then the repair, which may
            # take a load's time.
            names, addresses = seen
            await memo.kube.patch_model_status(namespace, model.name, {
                "replicas": list(names),
                "replicaAddresses": [dict(a) for a in addresses],
                "loadedReplicas": len(names),
            })  # fmt: skip
        await model_handlers.refresh(
            memo, namespace, model.name, inferencemodel_by_pool, inferencemodel_router_use
        )


def observed(
    model: PlacedModel,
    replicas: list[Replica],
    ready: Mapping[str, Mapping[str, str]],
    unreachable: Mapping[str, str],
) -> tuple[tuple[str, ...], tuple[tuple[tuple[str, str], ...], ...]]:
    """(replicas, addresses) as the status should say them: the pool's ready replicas where the
    entry is READY. A replica that did not answer this time keeps what the status said of it
    (one missed look is not a lost model; a dead pod leaves the endpoints)."""
    names = sorted(
        r.name
        for r in replicas
        if model.entry in ready.get(r.name, ())
        or (r.name in unreachable and r.name in model.replicas)
    )
    said = {dict(a).get("pod", ""): dict(a).get("version", "") for a in model.addresses}
    versions = {
        name: ready[name][model.entry] if name in ready else said.get(name, "") for name in names
    }
    return tuple(names), _frozen(replica_addresses(names, replicas, versions))


def _ready_below_wanted(model: PlacedModel, loaded: int, endpoints: int) -> bool:
    """Shown Ready while loaded on fewer replicas than it wants (its phase is stale)."""
    return model.ready and loaded < min(model.min_replicas, endpoints)


def _frozen(addresses: list[Mapping[str, str]]) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(tuple(sorted(a.items())) for a in addresses)
