"""What the fleet driver asks one Triton replica: its repository index, per-model recency and
queue, and load/unload through the repository API (shoal.fleet.triton_control does the HTTP).

Errors are typed so the driver acts on their kind, never on message text (shoal.fleet.errors):
ReplicaUnreachable (the server did not answer), LoadTimedOut (a load outlived its deadline),
LoadFailed (Triton answered the load with an error; its message is kept for status).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.fleet.errors import LoadFailed, LoadTimedOut, ReplicaUnreachable
from shoal.fleet.replica import Replica
from shoal.fleet.triton_control import (
    RequestTimedOut,
    ServerUnreachable,
    TritonControl,
    TritonControlError,
)

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0  # index, statistics, unload: a replica slower than this counts as unreachable


@dataclass
class ReplicaObservation:
    """One look at a replica: every Triton model it knows, by state, with recency and queue."""

    states: dict[str, str] = field(default_factory=dict)  # triton model -> READY/LOADING/...
    reasons: dict[str, str] = field(default_factory=dict)  # triton model -> Triton's reason
    last_inference_ms: dict[str, int] = field(default_factory=dict)
    inference_count: dict[str, int] = field(default_factory=dict)  # since the model loaded
    pending_requests: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # triton model -> its READY version

    def ready(self, triton_model: str) -> bool:
        return self.states.get(triton_model) == "READY"

    def serves(self, triton_model: str, version: int | None) -> bool:
        """READY, and at `version` where one is asked for (an index row without a version, as
        from servers that do not report it, counts as any version)."""
        if not self.ready(triton_model):
            return False
        served = self.versions.get(triton_model)
        return version is None or served is None or served == str(version)


class ReplicaClient:
    """One replica over shoal.fleet.triton_control (one short-lived HTTP client per operation;
    the driver serializes control calls per replica)."""

    def __init__(self, replica: Replica, *, log_reader: Callable[[], str] | None = None) -> None:
        self.replica = replica
        self._log_reader = log_reader  # a local server's log, to explain failed loads

    def _control(self) -> TritonControl:
        return TritonControl(
            self.replica.http_url, timeout_s=READ_TIMEOUT_S, log_reader=self._log_reader
        )

    def _unreachable(self, exc: TritonControlError) -> ReplicaUnreachable:
        return ReplicaUnreachable(self.replica.name, exc.summary)

    async def observe(self) -> ReplicaObservation:
        observation = ReplicaObservation()
        async with self._control() as control:
            try:
                index = await control.index()
                stats = await control.statistics()
            except TritonControlError as exc:
                raise self._unreachable(exc) from exc
            for entry in index:
                # The index lists every version; READY wins over older UNAVAILABLE entries.
                if observation.states.get(entry.name) != "READY":
                    observation.states[entry.name] = entry.state or ""
                    if entry.reason:
                        observation.reasons[entry.name] = entry.reason
                if entry.state == "READY" and entry.version:
                    observation.versions[entry.name] = entry.version
            for stat in stats:
                previous = observation.last_inference_ms.get(stat.name, 0)
                observation.last_inference_ms[stat.name] = max(stat.last_inference_ms, previous)
                observation.inference_count[stat.name] = (
                    observation.inference_count.get(stat.name, 0) + stat.inference_count
                )
            if self.replica.metrics_url is not None:
                try:
                    observation.pending_requests = await control.pending_requests(
                        self.replica.metrics_url
                    )
                except TritonControlError as exc:
                    log.debug("no metrics from %s: %s", self.replica.name, exc.summary)
        return observation

    async def ready_models(self) -> dict[str, str]:
        """The Triton models READY on the replica, with the version each serves ("" where the
        server does not say): one index call (the operator's frequent look,
        shoal.operator.placement_observer)."""
        async with self._control() as control:
            try:
                rows = await control.index(ready_only=True)
                return {row.name: row.version or "" for row in rows}
            except TritonControlError as exc:
                raise self._unreachable(exc) from exc

    async def load(self, triton_model: str, timeout_s: float) -> None:
        async with self._control() as control:
            try:
                await control.load(triton_model, timeout_s=timeout_s)
            except RequestTimedOut as exc:
                raise LoadTimedOut(triton_model, self.replica.name, timeout_s) from exc
            except ServerUnreachable as exc:
                raise self._unreachable(exc) from exc
            except TritonControlError as exc:
                raise LoadFailed(
                    triton_model, self.replica.name, exc.summary, retryable=exc.retryable
                ) from exc

    async def unload(self, triton_model: str) -> None:
        async with self._control() as control:
            try:
                await control.unload(triton_model)
            except (ServerUnreachable, RequestTimedOut) as exc:
                raise self._unreachable(exc) from exc
            except TritonControlError as exc:
                # Unloading a model Triton does not know is not worth a retry.
                log.warning("unload %s on %s: %s", triton_model, self.replica.name, exc.summary)
