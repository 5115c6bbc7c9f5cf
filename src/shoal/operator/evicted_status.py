"""An evicted model's status, at once: the replica it left is taken out of `status.replicas`
(and `loadedReplicas`) by whoever evicted it, right after the eviction, so that the router, which
routes by that list, stops sending there within a second instead of at the victim's next drift
run. Only those two fields are written here; the victim's own handlers still own its phase and
conditions, and its next run (drift timer) decides them from what Triton says.

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
            await kube.patch_model_status(
                victim.namespace,
                victim.name,
                {"replicas": replicas, "loadedReplicas": len(replicas)},
            )
        except ApiException as exc:  # the victim's drift run corrects it later
            log.info("status of evicted %s/%s not updated: %s", victim.namespace, victim.name, exc)
