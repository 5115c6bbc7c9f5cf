"""What the operator asks one Triton replica: its repository index, per-model recency and queue,
and load/unload through the repository API (HTTP, KServe v2 + Triton extensions).

Used by placer.py. Errors are sorted so the caller can act: `ReplicaUnreachable` (retry later),
`LoadFailed` (Triton refused the model; its message is kept for the InferenceModel's status).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import httpx

from shoal.operator.replicas import Replica

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 300.0  # a load returns when the model is ready; big encoders take a while
READ_TIMEOUT_S = 5.0
_PENDING = re.compile(r'^nv_inference_pending_request_count\{[^}]*model="([^"]+)"[^}]*\}\s+(\S+)')


class ReplicaUnreachable(RuntimeError):
    """The replica did not answer (restarting, network): retry later."""


class LoadFailed(RuntimeError):
    """Triton answered a load with an error: the message is Triton's."""

    def __init__(self, model: str, replica: str, message: str) -> None:
        super().__init__(f"Triton on {replica} failed to load {model!r}: {message}")
        self.model = model
        self.replica = replica
        self.triton_message = message


@dataclass
class ReplicaObservation:
    """One look at a replica: every Triton model it knows, by state, with recency and queue."""

    states: dict[str, str] = field(default_factory=dict)  # triton model -> READY/LOADING/...
    reasons: dict[str, str] = field(default_factory=dict)  # triton model -> Triton's reason
    last_inference_ms: dict[str, int] = field(default_factory=dict)
    pending_requests: dict[str, int] = field(default_factory=dict)

    def ready(self, triton_model: str) -> bool:
        return self.states.get(triton_model) == "READY"


class TritonReplicaClient:
    """One short-lived client per operation; the caller serializes control calls per replica."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def observe(self) -> ReplicaObservation:
        observation = ReplicaObservation()
        async with httpx.AsyncClient(
            base_url=self.replica.http_url, timeout=READ_TIMEOUT_S
        ) as http:
            try:
                index = await http.post("/v2/repository/index", json={})
                index.raise_for_status()
                stats = await http.get("/v2/models/stats")
                stats.raise_for_status()
            except httpx.HTTPError as exc:
                raise ReplicaUnreachable(f"replica {self.replica.name}: {exc!r}") from exc
        for item in index.json():
            name = item["name"]
            state = item.get("state", "")
            # The index lists every version; READY wins over older UNAVAILABLE entries.
            if observation.states.get(name) != "READY":
                observation.states[name] = state
                if item.get("reason"):
                    observation.reasons[name] = item["reason"]
        for stat in stats.json().get("model_stats", []):
            name = stat["name"]
            last = int(stat.get("last_inference") or 0)
            observation.last_inference_ms[name] = max(
                last, observation.last_inference_ms.get(name, 0)
            )
        observation.pending_requests = await self._pending_requests()
        return observation

    async def _pending_requests(self) -> dict[str, int]:
        if self.replica.metrics_url is None:
            return {}
        try:
            async with httpx.AsyncClient(timeout=READ_TIMEOUT_S) as http:
                response = await http.get(self.replica.metrics_url)
                response.raise_for_status()
        except httpx.HTTPError as exc:
            log.debug("no metrics from %s: %r", self.replica.name, exc)
            return {}
        pending: dict[str, int] = {}
        for line in response.text.splitlines():
            match = _PENDING.match(line)
            if match:
                model = match.group(1)
                pending[model] = pending.get(model, 0) + int(float(match.group(2)))
        return pending

    async def load(self, triton_model: str) -> None:
        async with httpx.AsyncClient(
            base_url=self.replica.http_url, timeout=CONTROL_TIMEOUT_S
        ) as http:
            try:
                response = await http.post(f"/v2/repository/models/{triton_model}/load", json={})
            except httpx.HTTPError as exc:
                raise ReplicaUnreachable(f"replica {self.replica.name}: {exc!r}") from exc
        if response.status_code != 200:
            raise LoadFailed(triton_model, self.replica.name, _error_text(response))

    async def unload(self, triton_model: str) -> None:
        async with httpx.AsyncClient(
            base_url=self.replica.http_url, timeout=CONTROL_TIMEOUT_S
        ) as http:
            try:
                response = await http.post(f"/v2/repository/models/{triton_model}/unload", json={})
            except httpx.HTTPError as exc:
                raise ReplicaUnreachable(f"replica {self.replica.name}: {exc!r}") from exc
        if response.status_code != 200:
            # Unloading a model Triton does not know is not an error worth retrying.
            log.warning(
                "unload %s on %s: %s", triton_model, self.replica.name, _error_text(response)
            )


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text or f"HTTP {response.status_code}"
