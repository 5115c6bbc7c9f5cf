"""The operator as kopf sees it: `kopf run -m shoal.operator.handlers` (or `shoal operator run`).

Importing this module registers every handler: startup/cleanup here, the InferencePool handlers
(pool_handlers.py), the InferenceModel handlers (model_handlers.py), the placement observer
(placement_observer.py) and a router's asks (demand_handlers.py). Per-run state (the Kubernetes
client, the placer with its per-replica locks) lives in kopf's memo, created at startup, so that several runs in one process (tests) never share
asyncio objects across event loops.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from shoal.fleet.driver import default_load_deadline
from shoal.fleet.placer import Placer
from shoal.operator import (  # noqa: F401  (registers handlers)
    demand_handlers,
    metrics,
    model_handlers,
    placement_observer,
    pool_handlers,
)
from shoal.operator import settings as shoal_settings
from shoal.operator.kube import REQUEST_TIMEOUT_S, KubeApi
from shoal.operator.settings import (
    ANNOTATION_PREFIX,
    FINALIZER,
    PEERING_LIFETIME_S,
    load_timeout_s,
)


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    shoal_settings.check()
    if memo.get("peering") and not settings.peering.standalone:
        # `shoal operator run` created the peering objects: without them kopf would fall back
        # to standalone and two operators would both act. The earliest started one acts.
        settings.peering.mandatory = True
        settings.peering.lifetime = PEERING_LIFETIME_S
    settings.persistence.finalizer = FINALIZER
    # Progress and the last handled spec in annotations: status stays what a person reads.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # No scanning for namespaces and CRDs: the operator serves the namespaces it is given (or
    # all) and the CRDs present at start-up, so it needs no cluster-wide list/watch of either
    # (the chart grants neither: tests/helm/test_rbac.py records every call).
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    # kopf's own API calls: a bounded wait for a restarted API server (its default is 5 min).
    settings.networking.request_timeout = REQUEST_TIMEOUT_S
    settings.networking.connect_timeout = 10
    # A deleted object keeps its finalizer until its timers have exited; kopf re-checks a timer
    # that was mid-run only every `cancellation_polling` seconds (60 by default), which held
    # deleted InferenceModels for up to a minute after their unload had finished.
    settings.background.cancellation_polling = 1.0
    memo.lifecycle = {"exiting": False}
    memo.kube = await KubeApi.connect()
    fixed_deadline = load_timeout_s()
    memo.placer = Placer(
        on_event=metrics.record_driver_event,
        load_deadline=(lambda memory: fixed_deadline) if fixed_deadline else default_load_deadline,
    )


@kopf.on.login()
def operator_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: $KUBECONFIG (read now, not when some client
    library happened to be imported) or ~/.kube/config. The same source as KubeApi.connect."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    # A timer still running finds its API client closed: not an error. (Shared through a dict:
    # each object's handlers see a shallow copy of the memo.)
    memo.lifecycle["exiting"] = True
    kube = getattr(memo, "kube", None)
    if kube is not None:
        await kube.close()
