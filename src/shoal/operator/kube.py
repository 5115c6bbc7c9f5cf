"""The operator's own Kubernetes API calls: apply the pool's children, read Endpoints and pools.

Used by handlers.py. kopf watches and patches the custom resources itself; this module is for
everything else, through kubernetes_asyncio with plain dicts in and out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from shoal.operator.crds import GROUP, MODEL_PLURAL, PEERING_GROUP, POOL_PLURAL, VERSION
from shoal.operator.resources import KEDA_GROUP, KEDA_VERSION, SCALED_OBJECT_PLURAL

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5  # read-modify-write attempts of one status update


class KubeApi:
    """One API client for the operator's lifetime (created at startup, closed at cleanup)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self._pdb_version: str | None = None

    @classmethod
    async def connect(cls) -> KubeApi:
        """In a pod: its service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            await config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self.api_client.close()

    def to_dict(self, obj: Any) -> dict[str, Any]:
        return self.api_client.sanitize_for_serialization(obj)

    # -- pools --------------------------------------------------------------------------------
    async def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, POOL_PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list_pools(self, namespace: str) -> list[dict[str, Any]]:
        result = await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, POOL_PLURAL
        )
        return list(result.get("items", []))

    async def update_pool_status(
        self,
        namespace: str,
        name: str,
        fields: dict[str, Any],
        conditions: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    ) -> None:
        """Write pool status `fields` and the conditions `conditions(current)` returns, read and
        written under the object's resourceVersion (retried on a conflict): the apply handler
        and the status timer each own their conditions and never overwrite the other's."""
        await self._update_status(POOL_PLURAL, namespace, name, fields, conditions)

    async def _update_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        fields: dict[str, Any],
        conditions: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    ) -> None:
        args = (GROUP, VERSION, namespace, plural, name)
        for _ in range(CONFLICT_RETRIES):
            try:
                current = await self.custom.get_namespaced_custom_object(*args)
            except ApiException as exc:
                if exc.status == 404:
                    return  # deleted meanwhile
                raise
            status = current.get("status") or {}
            desired = {**fields, "conditions": conditions(list(status.get("conditions") or []))}
            changes = {k: v for k, v in desired.items() if status.get(k) != v}
            if not changes:
                return
            body = {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": changes,
            }
            try:
                await self.custom.patch_namespaced_custom_object_status(
                    *args, body, _content_type="application/merge-patch+json"
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 409:
                    raise
        raise RuntimeError(f"{plural}/{name}: status kept changing under {CONFLICT_RETRIES} writes")

    # -- peering -------------------------------------------------------------------------------
    async def ensure_peering(
        self, name: str, namespaces: list[str] | None
    ) -> dict[str, dict[str, Any]]:
        """Create kopf's peering object `name` (cluster-wide when `namespaces` is None) where it
        is absent (kopf only patches an existing one); the peers they list, by id."""
        body = {"apiVersion": f"{PEERING_GROUP}/v1", "metadata": {"name": name}}
        peers: dict[str, dict[str, Any]] = {}
        try:
            if namespaces is None:
                args: tuple[Any, ...] = (PEERING_GROUP, "v1", "clusterkopfpeerings")
                await _created_or_present(self.custom.create_cluster_custom_object(
                    *args, {**body, "kind": "ClusterKopfPeering"}
                ))  # fmt: skip
                peers.update((await self.custom.get_cluster_custom_object(*args, name)).get(
                    "status") or {})  # fmt: skip
            for namespace in namespaces or []:
                args = (PEERING_GROUP, "v1", namespace, "kopfpeerings")
                await _created_or_present(self.custom.create_namespaced_custom_object(
                    *args, {**body, "kind": "KopfPeering"}
                ))  # fmt: skip
                peers.update((await self.custom.get_namespaced_custom_object(*args, name)).get(
                    "status") or {})  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                raise PeeringMissing(
                    f"the cluster does not serve {PEERING_GROUP} peering (its CRDs are not "
                    "installed): apply them with `shoal operator crds | kubectl apply -f -`, or "
                    "run with --standalone when no other operator runs"
                ) from None
            raise
        return peers

    # -- models ------------------------------------------------------------------------------
    async def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, MODEL_PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch an InferenceModel's status (None removes a field); a model deleted
        meanwhile is no error."""
        if not status:
            return
        try:
            await self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, MODEL_PLURAL, name, {"status": status},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- endpoints ----------------------------------------------------------------------------
    async def get_endpoints(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.to_dict(await self.core.read_namespaced_endpoints(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- children of a pool -------------------------------------------------------------------
    async def apply_deployment(
        self, desired: dict[str, Any], replicas_rule: Callable[[int | None], int]
    ) -> str:
        """Create the Deployment, or replace its template, labels and owner (rolling out a
        change); `replicas_rule(current)` decides `spec.replicas` (see resources.py).
        Returns "created", "updated" or "unchanged"."""
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        desired = _with_intent_hash(desired, exclude=("replicas",))
        try:
            current = self.to_dict(await self.apps.read_namespaced_deployment(name, namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self.apps.create_namespaced_deployment(namespace, desired)
            return "created"
        replicas = replicas_rule(current["spec"].get("replicas"))
        if _intent_hash(current) == _intent_hash(desired):
            if replicas == current["spec"].get("replicas"):
                return "unchanged"
            await self.apps.patch_namespaced_deployment(
                name, namespace, {"spec": {"replicas": replicas}}
            )
            return "updated"
        updated = {**current, "metadata": _merge_metadata(current, desired)}
        updated["spec"] = {
            **current["spec"],
            "template": desired["spec"]["template"],
            "strategy": desired["spec"]["strategy"],
            "replicas": replicas,
        }
        await self.apps.replace_namespaced_deployment(name, namespace, updated)
        return "updated"

    async def apply_service(self, desired: dict[str, Any]) -> str:
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        desired = _with_intent_hash(desired)
        try:
            current = self.to_dict(await self.core.read_namespaced_service(name, namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self.core.create_namespaced_service(namespace, desired)
            return "created"
        if _intent_hash(current) == _intent_hash(desired):
            return "unchanged"
        updated = {**current, "metadata": _merge_metadata(current, desired)}
        # clusterIP and its allocation are the API server's: keep them, replace what we own.
        updated["spec"] = {
            **current["spec"],
            "selector": desired["spec"]["selector"],
            "ports": desired["spec"]["ports"],
        }
        await self.core.replace_namespaced_service(name, namespace, updated)
        return "updated"

    async def pdb_api_version(self) -> str:
        """policy/v1 where served (Kubernetes >= 1.21), else policy/v1beta1."""
        if self._pdb_version is None:
            groups = self.to_dict(await client.ApisApi(self.api_client).get_api_versions())
            policy = next((g for g in groups.get("groups", []) if g["name"] == "policy"), None)
            versions = {v["version"] for v in (policy or {}).get("versions", [])}
            self._pdb_version = "policy/v1" if "v1" in versions else "policy/v1beta1"
        return self._pdb_version

    async def apply_pdb(self, desired: dict[str, Any]) -> str:
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        version = desired["apiVersion"].split("/")[1]
        args = ("policy", version, namespace, "poddisruptionbudgets")
        try:
            current = await self.custom.get_namespaced_custom_object(*args, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self.custom.create_namespaced_custom_object(*args, desired)
            return "created"
        if current.get("spec", {}).get("maxUnavailable") == desired["spec"]["maxUnavailable"]:
            return "unchanged"
        await self.custom.patch_namespaced_custom_object(
            *args,
            name,
            {"spec": {"maxUnavailable": desired["spec"]["maxUnavailable"]}},
            _content_type="application/merge-patch+json",
        )
        return "updated"

    # -- KEDA ---------------------------------------------------------------------------------
    async def serves_scaled_objects(self) -> bool:
        """Whether the cluster serves keda.sh/v1alpha1 scaledobjects (KEDA is installed).
        Asked each time (discovery is one cheap GET): KEDA may be installed after the pool."""
        try:
            resources = await self.custom.get_api_resources(KEDA_GROUP, KEDA_VERSION)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.name == SCALED_OBJECT_PLURAL for r in resources.resources or [])

    async def apply_scaled_object(self, desired: dict[str, Any]) -> str:
        """Create the pool's ScaledObject or replace its spec; "created", "updated",
        "unchanged", or "conflict" when an object of that name is not owned by the pool."""
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        args = (KEDA_GROUP, KEDA_VERSION, namespace, SCALED_OBJECT_PLURAL)
        desired = _with_intent_hash(desired)
        try:
            current = await self.custom.get_namespaced_custom_object(*args, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self.custom.create_namespaced_custom_object(*args, desired)
            return "created"
        if not _same_owner(current, desired):
            return "conflict"
        if _intent_hash(current) == _intent_hash(desired):
            return "unchanged"
        updated = {
            **current,
            "metadata": _merge_metadata(current, desired),
            "spec": desired["spec"],
        }
        await self.custom.replace_namespaced_custom_object(*args, name, updated)
        return "updated"

    async def delete_scaled_object(self, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete the pool's ScaledObject if there is one owned by it; True if deleted."""
        args = (KEDA_GROUP, KEDA_VERSION, namespace, SCALED_OBJECT_PLURAL)
        try:
            current = await self.custom.get_namespaced_custom_object(*args, name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        owners = (current.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("uid") == owner_uid for o in owners):
            return False
        try:
            await self.custom.delete_namespaced_custom_object(*args, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        return True


class PeeringMissing(RuntimeError):
    """kopf's peering CRDs are not installed."""


async def _created_or_present(create: Any) -> None:
    try:
        await create
    except ApiException as exc:
        if exc.status != 409:
            raise


def _same_owner(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    def uids(obj: dict[str, Any]) -> set[str]:
        return {o.get("uid") for o in (obj.get("metadata") or {}).get("ownerReferences") or []}

    return not uids(desired) or bool(uids(current) & uids(desired))


INTENT_ANNOTATION = "shoal.dev/intent-hash"


def _intent_hash(obj: dict[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(INTENT_ANNOTATION)


def _with_intent_hash(desired: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Mark an object with a hash of what the operator asked for. The server adds defaults to
    what it stores, so comparing specs would always differ; comparing the hash of our own intent
    tells whether a replace (and so a rollout) is due."""
    spec = {k: v for k, v in desired["spec"].items() if k not in exclude}
    intent = {"spec": spec, "labels": desired["metadata"].get("labels")}
    digest = hashlib.sha256(json.dumps(intent, sort_keys=True).encode()).hexdigest()[:16]
    metadata = dict(desired["metadata"])
    metadata["annotations"] = {**(metadata.get("annotations") or {}), INTENT_ANNOTATION: digest}
    return {**desired, "metadata": metadata}


def _merge_metadata(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(current["metadata"])
    metadata["labels"] = {**(metadata.get("labels") or {}), **desired["metadata"]["labels"]}
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        **desired["metadata"]["annotations"],
    }
    metadata["ownerReferences"] = desired["metadata"].get("ownerReferences", [])
    return metadata


MAX_ERROR_CHARS = 300


def api_error(exc: ApiException) -> str:
    """An API refusal in one short line: status, reason and the server's own message (the raw
    body is a 1.5 KB JSON Status a person does not need)."""
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = str(exc.body or "")
    text = f"{exc.status} {exc.reason}" + (f": {message}" if message else "")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def is_retriable(exc: ApiException) -> bool:
    """Whether the same request may succeed later (server trouble, conflict, throttling);
    other 4xx answers refuse the request as written."""
    return not exc.status or exc.status in (408, 409, 429) or exc.status >= 500
