"""The router's placement source in a cluster: InferenceModel status and the pools' Endpoints,
kept current by watches; asks and demand go to the operator as annotations.

Used by `shoal router run` in a cluster. One router serves one namespace: clients call a model by
its entry (the Triton ensemble name, `spec.entry`, default the InferenceModel's name), as they
would call Triton; InferenceModels and pools of other namespaces are not seen. Two InferenceModels
of one entry (on two pools) route to whichever has ready replicas (else the first by name).

- `route(entry).ready`: the pool's ready endpoints (shoal.operator.replicas) whose pod names are
  in the model's `status.replicas` (the operator lists there the pods where it is READY), and
  while a model moves to another pool under the same entry, those of its old copy
  (`status.movedFrom.replicas`) until the operator unloads it;
  `max_hold_s` from `spec.maxHoldSeconds`; `permanent_error` while the spec is invalid (the
  `Valid` condition is False: a person must change something); `manifest` from a mounted copy of
  the model repository, where given (the OpenAI endpoints need it).
- `request_placement(entry)`: annotates the InferenceModel (`shoal.dev/placement-requested`,
  shoal.operator.demand_annotations); the operator then places it, evicting by policy. At most
  one ask per model every REQUEST_INTERVAL_S, repeated at that pace while requests are held and
  the model is not ready, and asked again at once when a replica joins the model's pool while
  requests are held (a pool waking from zero).
- `report_demand`: while a model has held or in-flight requests, a lease annotation
  (`shoal.dev/router-in-use-until`) keeps the operator from evicting it; written when demand
  starts and refreshed before it runs out, never per request.
- Watches: list, then watch from the list's resourceVersion; when the server ends a watch,
  resume from the last version seen; after an error (410 Gone, the API server unreachable or
  restarted) back off and list again, so the view converges whatever was missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from shoal.fleet.replica import Replica
from shoal.manifest import Manifest, ManifestError
from shoal.operator.crds import GROUP, MODEL_PLURAL, VERSION
from shoal.operator.demand_annotations import (
    IN_USE_LEASE_S,
    PLACEMENT_REQUESTED,
    ROUTER_IN_USE_UNTIL,
    format_time,
)
from shoal.operator.replicas import replicas_from_endpoints
from shoal.router.placement_view import DEFAULT_MAX_HOLD_S, ModelRoute

log = logging.getLogger(__name__)

REQUEST_INTERVAL_S = 5.0  # at most one placement ask per model this often
WATCH_TIMEOUT_S = 60  # the server ends each watch after this; it is resumed at once
BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 5.0


class ResourceWatch:
    """One resource kind in one namespace, listed and watched, with reconnects.

    `list_call(namespace, **kwargs)` is a kubernetes_asyncio list function; `on_reset(objects)`
    receives every object after each (re)list, `on_event(type, object)` each change."""

    def __init__(
        self,
        kind: str,
        list_call: Callable[..., Any],
        on_reset: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        watch_timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        self.kind = kind
        self._list = list_call
        self._on_reset = on_reset
        self._on_event = on_event
        self._watch_timeout_s = watch_timeout_s
        self.synced = asyncio.Event()  # set after the first successful list
        self.relists = 0

    async def run(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            try:
                version = await self._relist()
                backoff = BACKOFF_START_S
                while True:  # resume from the last version each time the server ends a watch
                    version = await self._watch_from(version)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch expired (410 Gone): listing again", self.kind)
                    continue
                log.warning("%s watch: %s %s; listing again", self.kind, exc.status, exc.reason)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("%s watch: API server unreachable (%s); retrying", self.kind, exc)
            except Exception:  # a malformed event must not end the router's view for good
                log.exception("%s watch failed; listing again", self.kind)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _relist(self) -> str:
        response = await self._list(_preload_content=False, _request_timeout=30)
        listing = await response.json()
        self._on_reset(list(listing.get("items") or []))
        self.relists += 1
        self.synced.set()
        return listing["metadata"]["resourceVersion"]

    async def _watch_from(self, version: str) -> str:
        stream = watch.Watch(return_type="object")  # raw dicts, no model classes
        try:
            async for event in stream.stream(
                self._list,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout_s,
                _request_timeout=self._watch_timeout_s + 15,  # a hung server ends the watch too
            ):
                body = event["raw_object"]
                version = body.get("metadata", {}).get("resourceVersion", version)
                if event["type"] != "BOOKMARK":
                    self._on_event(event["type"], body)
        finally:
            await stream.close()
        return version


class KubePlacement:
    """A `PlacementSource` (shoal.router.placement_view) for one namespace of a cluster."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        *,
        request_interval_s: float = REQUEST_INTERVAL_S,
        lease_s: float = IN_USE_LEASE_S,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        repository: Path | None = None,
    ) -> None:
        self.namespace = namespace
        # A copy of the pools' model repository (mounted): entries' manifests, which the OpenAI
        # endpoints need; None: only the KServe v2 endpoints serve the models.
        self._repository = repository
        self._manifests: dict[tuple[str, str | None], Manifest | None] = {}
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._request_interval_s = request_interval_s
        self._lease_s = lease_s
        self._models: dict[str, dict[str, Any]] = {}  # InferenceModel name -> object
        self._endpoints: dict[str, dict[str, Any]] = {}  # Service name -> Endpoints object
        self._demand: dict[str, int] = {}  # entry -> held + in flight
        self._asked_at: dict[str, float] = {}  # entry -> monotonic time of the last ask
        self._lease_until: dict[str, float] = {}  # InferenceModel name -> lease written (epoch)
        self._writes: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._routes: dict[str, ModelRoute | None] = {}  # entry -> route, until the next change
        self._by_entry: dict[str, list[dict[str, Any]]] | None = None
        self.model_watch = ResourceWatch(
            "InferenceModel",
            lambda **kw: self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, MODEL_PLURAL, **kw
            ),
            lambda items: self._reset(self._models, items),
            lambda kind, body: self._apply(self._models, kind, body),
            watch_timeout_s,
        )
        self.endpoints_watch = ResourceWatch(
            "Endpoints",
            lambda **kw: self._core.list_namespaced_endpoints(namespace, **kw),
            lambda items: self._reset(self._endpoints, items),
            self._apply_endpoints,
            watch_timeout_s,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.owned_client: client.ApiClient | None = None  # closed with the source

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the watches and wait until both have listed once."""
        self._tasks = [
            asyncio.create_task(self.model_watch.run(), name="watch InferenceModels"),
            asyncio.create_task(self.endpoints_watch.run(), name="watch Endpoints"),
            asyncio.create_task(self._keep_up(), name="leases and asks while requests wait"),
        ]
        try:
            async with asyncio.timeout(timeout_s):
                await self.model_watch.synced.wait()
                await self.endpoints_watch.synced.wait()
        except TimeoutError:
            await self.close()
            raise TimeoutError(
                f"could not list InferenceModels and Endpoints in namespace {self.namespace!r} "
                f"within {timeout_s:.0f} s: check the router's kubeconfig or service account "
                "(it needs get/list/watch/patch on inferencemodels.shoal.dev and list/watch on "
                "endpoints)"
            ) from None

    async def close(self) -> None:
        tasks = [*self._tasks, *self._writes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self.owned_client is not None:
            await self.owned_client.close()
            self.owned_client = None

    # -- PlacementSource ------------------------------------------------------------------------
    def route(self, model: str) -> ModelRoute | None:
        # Asked for every request: computed once per placement change (the cache is emptied
        # with each change, see _notify).
        if model not in self._routes:
            candidates = [self._route_of(body) for body in self._bodies_of(model)]
            self._routes[model] = next((r for r in candidates if r.ready), None) or (
                candidates[0] if candidates else None
            )
        return self._routes[model]

    def models(self) -> Sequence[str]:
        return sorted({_entry(body) for body in self._models.values()})

    async def request_placement(self, model: str) -> None:
        self._ask(model, force=False)

    def report_demand(self, model: str, held: int, in_flight: int) -> None:
        in_use = held + in_flight
        if in_use:
            self._demand[model] = in_use
            self._extend_leases(model)
        else:
            self._demand.pop(model, None)

    def changed(self) -> asyncio.Event:
        return self._changed

    def peers(self, service: str, port_name: str, own_pod: str | None) -> list[str]:
        """host:port of `port_name` on every ready address of `service` but `own_pod`: the
        other routers, for the KEDA scaler (shoal.router.keda_scaler)."""
        targets = []
        for subset in (self._endpoints.get(service) or {}).get("subsets") or []:
            ports = {p.get("name"): p["port"] for p in subset.get("ports") or []}
            if port_name not in ports:
                continue
            for address in subset.get("addresses") or []:
                if own_pod and (address.get("targetRef") or {}).get("name") == own_pod:
                    continue
                targets.append(f"{address['ip']}:{ports[port_name]}")
        return sorted(targets)

    # -- reading --------------------------------------------------------------------------------
    def _bodies_of(self, entry: str) -> list[dict[str, Any]]:
        """The InferenceModels of `entry` (usually one), by name."""
        if self._by_entry is None:
            by_entry: dict[str, list[dict[str, Any]]] = {}
            for _, body in sorted(self._models.items()):
                if not body["metadata"].get("deletionTimestamp"):
                    by_entry.setdefault(_entry(body), []).append(body)
            self._by_entry = by_entry
        return self._by_entry.get(entry, [])

    def _route_of(self, body: dict[str, Any]) -> ModelRoute:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        pool = status.get("pool") or spec.get("pool") or ""
        ready = self._ready_in(pool, status.get("replicas"))
        moved_from = status.get("movedFrom") or {}
        if moved_from.get("pool") and moved_from.get("entry") == _entry(body):
            # A moving model's old copy serves until the operator unloads it.
            ready += self._ready_in(moved_from["pool"], moved_from.get("replicas"))
        return ModelRoute(
            name=_entry(body),
            pool=pool,
            ready=ready,
            max_hold_s=float(spec.get("maxHoldSeconds") or DEFAULT_MAX_HOLD_S),
            permanent_error=_permanent_error(body),
            manifest=self._manifest_of(_entry(body), status.get("servedVersion")),
        )

    def _ready_in(self, pool: str, loaded_on: list[str] | None) -> tuple[Replica, ...]:
        """The pool's ready endpoints whose pods are in `loaded_on`."""
        names = set(loaded_on or ())
        endpoints = replicas_from_endpoints(self._endpoints.get(pool))
        return tuple(r for r in endpoints if r.name in names)

    def _manifest_of(self, entry: str, served_version: str | None) -> Manifest | None:
        """The entry's manifest, read again when the version its replicas serve changes (a
        re-export rolled out by the operator)."""
        if self._repository is None:
            return None
        key = (entry, served_version)
        if key not in self._manifests:
            try:
                self._manifests[key] = Manifest.read(self._repository / entry)
            except ManifestError as exc:
                log.warning("no manifest for %s (/v1 endpoints off for it): %s", entry, exc)
                self._manifests[key] = None
        return self._manifests[key]

    # -- watch callbacks ------------------------------------------------------------------------
    def _reset(self, store: dict[str, dict[str, Any]], items: list[dict[str, Any]]) -> None:
        store.clear()
        store.update({item["metadata"]["name"]: item for item in items})
        self._notify()

    def _apply(self, store: dict[str, dict[str, Any]], kind: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if kind == "DELETED":
            store.pop(name, None)
        else:
            store[name] = body
        self._notify()

    def _apply_endpoints(self, kind: str, body: dict[str, Any]) -> None:
        pool = body["metadata"]["name"]
        before = {r.name for r in replicas_from_endpoints(self._endpoints.get(pool))}
        self._apply(self._endpoints, kind, body)
        after = {r.name for r in replicas_from_endpoints(self._endpoints.get(pool))}
        if after - before:
            # A replica joined (a pool waking from zero): ask again for what waits on it now.
            for entry in list(self._demand):
                route = self.route(entry)
                if route is not None and route.pool == pool and not route.ready:
                    self._ask(entry, force=True)

    def _notify(self) -> None:
        self._routes.clear()
        self._by_entry = None
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- writing --------------------------------------------------------------------------------
    def _ask(self, entry: str, force: bool) -> None:
        now = time.monotonic()
        last = self._asked_at.get(entry)
        if not force and last is not None and now - last < self._request_interval_s:
            return
        bodies = self._bodies_of(entry)
        if not bodies:
            return
        self._asked_at[entry] = now
        for body in bodies:  # each InferenceModel of the entry: any of them may be placed
            self._annotate(body["metadata"]["name"], PLACEMENT_REQUESTED, time.time())

    def _extend_leases(self, entry: str) -> None:
        """Write a lease where the one written has less than half its time left."""
        now = time.time()
        for body in self._bodies_of(entry):
            name = body["metadata"]["name"]
            if self._lease_until.get(name, 0.0) - now < self._lease_s / 2:
                self._lease_until[name] = now + self._lease_s
                self._annotate(name, ROUTER_IN_USE_UNTIL, now + self._lease_s)

    async def _keep_up(self) -> None:
        """While requests wait without new reports: keep their leases alive, and ask again for
        a model still not ready (the operator may have refused while memory was in use)."""
        while True:
            await asyncio.sleep(min(self._lease_s / 4, self._request_interval_s))
            for entry in list(self._demand):
                self._extend_leases(entry)
                route = self.route(entry)
                if route is not None and not route.ready:
                    self._ask(entry, force=False)

    def _annotate(self, name: str, key: str, epoch_s: float) -> None:
        task = asyncio.create_task(self._patch_annotation(name, key, format_time(epoch_s)))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _patch_annotation(self, name: str, key: str, value: str) -> None:
        patch = {"metadata": {"annotations": {key: value}}}
        try:
            await self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, MODEL_PLURAL, name, patch,
                _content_type="application/merge-patch+json", _request_timeout=10,
            )  # fmt: skip
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The next ask or lease refresh writes again; held requests keep their deadline.
            if key == ROUTER_IN_USE_UNTIL:
                self._lease_until.pop(name, None)
            log.warning("could not annotate InferenceModel %s/%s: %s", self.namespace, name, exc)


def _entry(body: dict[str, Any]) -> str:
    return (body.get("spec") or {}).get("entry") or body["metadata"]["name"]


def _permanent_error(body: dict[str, Any]) -> str | None:
    """The operator's message while the spec cannot work as written (Valid is False and the
    phase Failed; a missing pool is Pending: it may yet be created)."""
    status = body.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Valid" and condition.get("status") == "False":
            name = body["metadata"]["name"]
            return f"InferenceModel {name}: {condition.get('message') or condition.get('reason')}"
    return None


async def connect(namespace: str, **options: Any) -> KubePlacement:
    """A source on the pod's service account, else $KUBECONFIG (as the operator connects); it
    closes its API client when closed."""
    from shoal.operator.kube import KubeApi  # noqa: PLC0415

    kube = await KubeApi.connect()
    source = KubePlacement(kube.api_client, namespace, **options)
    source.owned_client = kube.api_client
    return source
