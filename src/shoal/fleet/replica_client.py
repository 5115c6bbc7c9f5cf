"""What the operator asks one Triton replica: its repository index, per-model recency and queue,
and load/unload through the repository API (shoal.fleet.triton_control does the HTTP).

Used by placer.py. Errors are sorted so the caller can act: `ReplicaUnreachable` (retry later),
`LoadFailed` (Triton refused the model; its message is kept for the InferenceModel's status).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from shoal.fleet.replica import Replica
from shoal.fleet.triton_control import RetryableTritonError, TritonControl, TritonControlError

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0  # loads have their own, long timeout (triton_control)


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
    """The operator's view of one replica, over shoal.fleet.triton_control (one short-lived client per
    operation; the caller serializes control calls per replica)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def _control(self) -> TritonControl:
        return TritonControl(self.replica.http_url, timeout_s=READ_TIMEOUT_S)

    async def observe(self) -> ReplicaObservation:
        observation = ReplicaObservation()
        async with self._control() as control:
            try:
                index = await control.index()
                stats = await control.statistics()
            except TritonControlError as exc:
                raise ReplicaUnreachable(f"replica {self.replica.name}: {exc.summary}") from exc
            for entry in index:
                # The index lists every version; READY wins over older UNAVAILABLE entries.
                if observation.states.get(entry.name) != "READY":
                    observation.states[entry.name] = entry.state or ""
                    if entry.reason:
                        observation.reasons[entry.name] = entry.reason
            for stat in stats:
                previous = observation.last_inference_ms.get(stat.name, 0)
                observation.last_inference_ms[stat.name] = max(stat.last_inference_ms, previous)
            if self.replica.metrics_url is not None:
                try:
                    observation.pending_requests = await control.pending_requests(
                        self.replica.metrics_url
                    )
                except TritonControlError as exc:
                    log.debug("no metrics from %s: %s", self.replica.name, exc.summary)
        return observation

    async def load(self, triton_model: str) -> None:
        async with self._control() as control:
            try:
                await control.load(triton_model)
            except RetryableTritonError as exc:
                if _unreachable(exc):
                    raise ReplicaUnreachable(f"replica {self.replica.name}: {exc.summary}") from exc
                raise LoadFailed(triton_model, self.replica.name, exc.summary) from exc
            except TritonControlError as exc:
                raise LoadFailed(triton_model, self.replica.name, exc.summary) from exc

    async def unload(self, triton_model: str) -> None:
        async with self._control() as control:
            try:
                await control.unload(triton_model)
            except RetryableTritonError as exc:
                raise ReplicaUnreachable(f"replica {self.replica.name}: {exc.summary}") from exc
            except TritonControlError as exc:
                # Unloading a model Triton does not know is not worth a retry.
                log.warning("unload %s on %s: %s", triton_model, self.replica.name, exc.summary)


def _unreachable(exc: TritonControlError) -> bool:
    return "unreachable" in exc.summary or "timed out" in exc.summary
