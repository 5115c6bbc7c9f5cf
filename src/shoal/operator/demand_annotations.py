"""The two annotations through which a router speaks to the operator about an InferenceModel.

Written by the router (shoal.router.kube_placement), read by the operator
(shoal.operator.demand_handlers and the model index in model_handlers.py). Annotations, not
status: status belongs to the operator alone, and a router needs only `patch` on the object.

- `shoal.dev/placement-requested: <time>`: a request is held for the model; the operator places
  it, evicting by policy where memory is short (as on create). A request older than
  `PLACEMENT_REQUEST_FRESH_S` is ignored (an operator restarting does not replay old asks).
- `shoal.dev/router-in-use-until: <time>`: requests are held or in flight at a router; until then
  the model counts as in use and is not evicted. A lease, refreshed by any router while it has
  demand, so several routers never overwrite each other's counts and a router that dies
  releases the model when its lease runs out.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from shoal.fleet.placer import KnownModel
from shoal.operator.settings import ANNOTATION_PREFIX

PLACEMENT_REQUESTED = f"{ANNOTATION_PREFIX}/placement-requested"
ROUTER_IN_USE_UNTIL = f"{ANNOTATION_PREFIX}/router-in-use-until"
PLACEMENT_REQUEST_FRESH_S = 120.0
IN_USE_LEASE_S = 30.0


def format_time(epoch_s: float) -> str:
    """RFC 3339 in UTC with milliseconds (two asks within a second stay distinct)."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of a time written by `format_time`; None when absent or unreadable."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def in_use_until(annotations: Mapping[str, str] | None) -> float:
    """Until when a router keeps the model in use (epoch seconds; 0: not in use)."""
    return parse_time((annotations or {}).get(ROUTER_IN_USE_UNTIL)) or 0.0


def with_router_use(
    known: dict[str, KnownModel],
    namespace: str,
    leases: Mapping[tuple[str, str], Iterable[float]] | None,
) -> dict[str, KnownModel]:
    """`known` with each entry whose router lease runs now counted as in use (not evicted).
    `leases` is the kopf index by (namespace, entry) of lease ends (demand_handlers.py); read
    at placement time, since a lease ends without any event on the object."""
    if not leases:
        return known
    now = time.time()
    counted = {}
    for entry, info in known.items():
        if max(leases.get((namespace, entry), ()), default=0.0) > now:
            info = dataclasses.replace(info, in_use=info.in_use + 1)
        counted[entry] = info
    return counted
