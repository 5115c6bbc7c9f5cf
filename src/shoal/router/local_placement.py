"""The router's placement source for `shoal serve`: its one local Triton, placed by the serve
controller (shoal.runtime.controller.LocalController).

Used by `shoal serve` (shoal.runtime.serve) when the router runs in front of Triton. What it adds
to the controller:
- `route(model)` reads the controller's view: the one replica when the entry is READY;
- `request_placement(model)` starts `ensure_loaded` in a task, one per model at a time (the
  controller evicts by policy first when the budget needs it);
- a refusal that no wait can fix (a broken entry, a load Triton refuses for good, a model
  larger than the budget minus what is pinned) becomes the route's `permanent_error`; a refusal
  because every other model is in use is retried when demand or placement changes, and one
  because Triton did not answer (serve restarts it) after a backoff while requests wait;
- `report_demand` feeds the controller's in-use view, so held and in-flight models are not
  evicted;
- `changed()` fires on every load and eviction (the controller's listeners) and on every
  refusal, so held requests are dispatched or failed without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from shoal.fleet.errors import EntryInvalid, FleetError, LoadFailed, PlacementRefused
from shoal.fleet.placement import format_size
from shoal.fleet.replica import Replica
from shoal.router.placement_view import ModelRoute
from shoal.runtime.controller import LocalController

log = logging.getLogger(__name__)

LOCAL_POOL = "local"
RETRY_START_S, RETRY_MAX_S = 0.5, 5.0


class LocalPlacement:
    """A `PlacementSource` (shoal.router.placement_view) over one LocalController."""

    def __init__(
        self,
        controller: LocalController,
        replica: Replica,
        *,
        max_hold_s: float | None = None,
    ) -> None:
        self.controller = controller
        self.replica = replica
        self._max_hold_s = max_hold_s
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._permanent: dict[str, str] = {}  # model -> why it can never load as configured
        self._blocked: set[str] = set()  # refused for now: retried on the next change
        self._retry_delay_s: dict[str, float] = {}  # after temporary failures (Triton down)
        self._retries: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        controller.listeners.append(self._on_placement)

    # -- PlacementSource ------------------------------------------------------------------------
    def route(self, model: str) -> ModelRoute | None:
        entry = self.controller.entries.get(model)
        if entry is None:
            return None
        extra = {} if self._max_hold_s is None else {"max_hold_s": self._max_hold_s}
        return ModelRoute(
            name=model,
            pool=LOCAL_POOL,
            ready=(self.replica,) if entry.ready else (),
            permanent_error=self._permanent.get(model),
            manifest=self.controller.manifests.get(model),
            **extra,
        )

    def models(self) -> Sequence[str]:
        return list(self.controller.entries)

    async def request_placement(self, model: str) -> None:
        if model not in self.controller.entries or model in self._permanent:
            return
        running = self._loads.get(model)
        if running is not None and not running.done():
            return
        self._blocked.discard(model)
        self._loads[model] = asyncio.create_task(self._load(model), name=f"place {model}")

    def report_demand(self, model: str, held: int, in_flight: int) -> None:
        entry = self.controller.entries.get(model)
        if entry is None:
            return
        before, in_use = entry.in_use, held + in_flight
        self.controller.report_use(model, in_use)
        if before and not in_use and self._blocked:
            # A model just stopped being in use: what was refused for lack of room may fit now.
            self._retry_blocked()

    def changed(self) -> asyncio.Event:
        return self._changed

    # -- inside ---------------------------------------------------------------------------------
    async def _load(self, model: str) -> None:
        try:
            await self.controller.ensure_loaded(model)
        except EntryInvalid as exc:
            self._permanent[model] = str(exc)
        except LoadFailed as exc:
            if exc.retryable:  # e.g. out of memory: may pass
                log.warning("loading %s failed: %s", model, exc)
                self._retry_later(model)
            else:
                self._permanent[model] = str(exc)
        except PlacementRefused as exc:
            why = self._never_fits(model)
            if why:
                self._permanent[model] = why
            else:
                self._blocked.add(model)
                log.info("%s waits for room: %s", model, exc)
        except FleetError as exc:
            # Triton did not answer (serve restarts a dead one) or the load timed out: tried
            # again after a backoff while requests are still held for the model.
            log.warning("loading %s failed: %s", model, exc)
            self._retry_later(model)
        else:
            self._retry_delay_s.pop(model, None)
        finally:
            self._notify()

    def _never_fits(self, model: str) -> str | None:
        """Why `model` cannot load whatever is evicted (only pinned models stay), or None."""
        entries = self.controller.entries
        pinned = sum(e.memory_bytes for e in entries.values() if e.pinned and e.name != model)
        budget = self.controller.budget_bytes
        need = entries[model].memory_bytes
        if need + pinned <= budget:
            return None
        return (
            f"model {model!r} needs {format_size(need)}, and the memory budget of "
            f"{format_size(budget)} has {format_size(max(budget - pinned, 0))} left beside the "
            "pinned models: raise --memory-budget, unpin a model, or export a smaller variant"
        )

    def _retry_later(self, model: str) -> None:
        """Ask again after a backoff (0.5 s doubling to 5 s) if requests still wait for it."""
        delay = self._retry_delay_s.get(model, RETRY_START_S)
        self._retry_delay_s[model] = min(delay * 2, RETRY_MAX_S)

        async def retry() -> None:
            await asyncio.sleep(delay)
            entry = self.controller.entries[model]
            if entry.in_use and not entry.ready:
                await self.request_placement(model)

        task = asyncio.get_running_loop().create_task(retry(), name=f"retry {model}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _retry_blocked(self) -> None:
        for model in sorted(self._blocked):
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to retry on
                asyncio.get_running_loop().create_task(self.request_placement(model))

    def _on_placement(self, model: str, loaded: bool) -> None:
        if loaded:
            self._permanent.pop(model, None)
        elif self._blocked:
            self._retry_blocked()  # an eviction freed memory
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def close(self) -> None:
        """Cancel loads still running (serve is stopping)."""
        tasks = [t for t in [*self._loads.values(), *self._retries] if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
