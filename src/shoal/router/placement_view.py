"""What the router knows of placement, and how it asks for a model: the one seam between the
router's data plane and whoever owns placement.

Two sources implement `PlacementSource`:
- locally (`shoal serve`), the fleet driver of the one Triton it supervises: asking for a model
  loads it (evicting by policy);
- in a cluster, watches of InferenceModel status and the pools' Endpoints: asking for a model
  tells the operator (the router never calls Triton's load API itself).

The data plane (hold queues, affinity, retries) reads `ready_replicas` and waits on `changed()`;
it never polls. A source wakes every waiter on any change; waiters re-check their own model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shoal.fleet.replica import Replica
from shoal.manifest import Manifest

DEFAULT_MAX_HOLD_S = 60.0


@dataclass(frozen=True)
class ModelRoute:
    """Where a model may be served from, as the router needs it."""

    name: str  # the ensemble name clients call
    pool: str  # the pool whose replicas may load it ("local" for `shoal serve`)
    ready: tuple[Replica, ...] = ()  # replicas where the model is READY now
    max_hold_s: float = DEFAULT_MAX_HOLD_S
    # A problem that no wait will fix (entry invalid, too large for the pool): held requests fail
    # at once with it instead of waiting out their deadline.
    permanent_error: str | None = None
    # The entry's manifest, where the source has it: the OpenAI-style endpoints read tensor names,
    # task, dims and batch size from it. None: only the KServe v2 endpoints serve the model.
    manifest: Manifest | None = None


class PlacementSource(Protocol):
    def route(self, model: str) -> ModelRoute | None:
        """The model's route, or None when no such model exists (unknown model)."""
        ...

    def models(self) -> Sequence[str]:
        """Every model this source knows (for listings and errors naming what exists)."""
        ...

    async def request_placement(self, model: str) -> None:
        """Ask for `model` to be loaded somewhere. Returns quickly; readiness arrives through
        `changed()`. Idempotent: asking again while a load is under way does nothing more."""
        ...

    def report_demand(self, model: str, held: int, in_flight: int) -> None:
        """Held and in-flight requests count as use: the owner must not evict the model."""
        ...

    def changed(self) -> asyncio.Event:
        """An event set on every placement change; the source replaces it with a fresh one after
        setting it, so `await source.changed().wait()` always waits for the next change."""
        ...
