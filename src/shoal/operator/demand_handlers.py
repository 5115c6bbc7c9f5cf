"""A router asks for a model: the operator places it, evicting by policy where memory is short.

Registered with kopf by importing shoal.operator.handlers. The router writes the annotation
`shoal.dev/placement-requested` (shoal.operator.demand_annotations) when it holds a request for a
model that is not ready; this handler then reconciles the model as on create (model_handlers'
`_reconcile` with eviction allowed), which is what takes an `Evicted` model back.

kopf's change detection ignores annotations under the operator's own prefix (its diff base drops
them), so this is an event handler: it sees every event of the object and acts once per ask,
remembering the last ask handled per object. Asks older than PLACEMENT_REQUEST_FRESH_S are
ignored, so a restarted operator does not evict for a request long gone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from shoal.operator import model_handlers
from shoal.operator.crds import GROUP, MODEL_PLURAL, VERSION
from shoal.operator.demand_annotations import (
    PLACEMENT_REQUEST_FRESH_S,
    PLACEMENT_REQUESTED,
    in_use_until,
    parse_time,
)

log = logging.getLogger(__name__)


@kopf.index(GROUP, VERSION, MODEL_PLURAL)
def inferencemodel_router_use(
    namespace: str, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[tuple[str, str], float]:
    """Router leases by (namespace, entry): until when a router keeps each entry in use
    (model_handlers counts them as in use when it places; demand_annotations.with_router_use)."""
    until = in_use_until(meta.get("annotations"))
    if not until:
        return {}
    return {(namespace, spec.get("entry") or name): until}


@kopf.on.event(GROUP, VERSION, MODEL_PLURAL, annotations={PLACEMENT_REQUESTED: kopf.PRESENT})
async def inferencemodel_placement_requested(
    type: str | None,  # noqa: A002  (kopf's name)
    meta: kopf.Meta,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if type == "DELETED" or meta.get("deletionTimestamp"):
        return
    stamp = meta.get("annotations", {}).get(PLACEMENT_REQUESTED)
    asked_at = parse_time(stamp)
    if asked_at is None or time.time() - asked_at > PLACEMENT_REQUEST_FRESH_S:
        return
    handled: dict[str, str] = memo.setdefault("placement_requests_handled", {})
    uid = meta.get("uid") or ""
    if handled.get(uid) == stamp:
        return  # this ask is done; later events are our own status patches and the like
    handled[uid] = stamp
    log.info("%s/%s: placement requested by a router", kwargs.get("namespace"), kwargs.get("name"))
    # No kopf retries for event handlers: a router asks again while it still holds requests.
    await model_handlers._reconcile(
        allow_evict=True, raise_for_retry=False, meta=meta, memo=memo, **kwargs
    )
