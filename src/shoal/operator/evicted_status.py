"""An evicted model's status, at once: the replica it left is taken out of `status.replicas`
(and `replicaAddresses`, `loadedReplicas`) by whoever evicted it, right after the eviction, so
that the router, which routes by that list, stops sending there at once. Only those fields are
written here; the victim's own handlers' code still decides its phase and conditions (the
placement observer sees it Ready below its wanted replicas and has that code run at once).

Called by the model handlers (placement) and the pool handlers (budget enforcement) with the
evictions shoal.fleet.placer reports.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from shoal.fleet.placer import Eviction, KnownModel

log = logging.getLogger(__name__)


async def withdraw_evicted(
    kube: Any, evictions: Iterable[Eviction], known: Mapping[str, KnownModel]
) -> None:
    for eviction in evictions:
        victim = known.get(eviction.entry)
        if victim is None:
            continue  # nobody owns it: no status to correct
        try:
            body = await kube.get_model(victim.namespace, victim.name)
            replicas = list(((body or {}).get("status") or {}).get("replicas") or [])
            if eviction.replica not in replicas:
                continue
            replicas.remove(eviction.replica)
            addresses = [
                a for a in body["status"].get("replicaAddresses") or []
                if a.get("pod") != eviction.replica
            ]  # fmt: skip
            await kube.patch_model_status(
                victim.namespace,
                victim.name,
                {
                    "replicas": replicas,
                    "replicaAddresses": addresses,
                    "loadedReplicas": len(replicas),
                },
            )
        except ApiException as exc:  # the victim's drift run corrects it later
            log.info("status of evicted %s/%s not updated: %s", victim.namespace, victim.name, exc)
