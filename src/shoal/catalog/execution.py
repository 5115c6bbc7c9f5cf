"""Runs the planned exports: parallel processes, bounded by --jobs and by memory.

Called by `shoal build` after planning. Exports run in spawned worker processes (worker.py), at
most `jobs` of them, each serving exports one after another. A new export starts only while fewer
than `jobs` run and its memory estimate fits beside the running ones in the budget (MemAvailable
by default); one export always runs, even if its estimate alone exceeds the budget. Larger models
start first (shorter builds overall). When an export finishes, its entry is published at once
(the others keep running), so one failure costs only its model.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from multiprocessing.connection import Connection, wait
from typing import Protocol

from shoal.catalog.planning import Action, PlannedModel
from shoal.catalog.publishing import Destination, LocalRepository
from shoal.catalog.worker import ExportJob, ExportOutcome, serve
from shoal.manifest import Manifest

log = logging.getLogger(__name__)

# Rough peak memory of one export: the interpreter with torch, transformers and onnxruntime
# loaded, plus the fp32 weights held several times at once (the torch model, the traced graph, the
# ONNX protobuf and its optimized copy, an onnxruntime session for parity, the PyTorch reference).
EXPORT_BASE_BYTES = 1_200 * 2**20
EXPORT_BYTES_PER_PARAMETER = 6 * 4
TICK_S = 1.0  # how often a live display refreshes while exports run


class Status(StrEnum):
    BUILT = "built"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelResult:
    name: str
    status: Status
    reason: str  # why it was built/skipped, or the error
    elapsed_s: float = 0.0
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED


class Progress(Protocol):
    def started(self, name: str, reason: str, running: int, remaining: int) -> None: ...
    def finished(self, result: ModelResult) -> None: ...
    def tick(self) -> None: ...


def export_memory_estimate(parameter_count: int) -> int:
    return EXPORT_BASE_BYTES + EXPORT_BYTES_PER_PARAMETER * parameter_count


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (what can be used without swapping), else total memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def next_to_start(pending: list[int], running: list[int], jobs: int, budget: int) -> int | None:
    """Index of the first pending export (by memory estimate) that may start now, or None.

    At most `jobs` at once; the estimates of the running ones plus the new one must fit in
    `budget`, except that one export always runs when none does (progress beats a stall)."""
    if not pending or len(running) >= jobs:
        return None
    if not running:
        return 0
    used = sum(running)
    for index, estimate in enumerate(pending):
        if used + estimate <= budget:
            return index
    return None


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection  # duplex: jobs out, outcomes in
    plan: PlannedModel | None = None  # the export it runs now; None: idle
    started: float = 0.0
    estimate: int = 0


def run_exports(
    plans: list[PlannedModel],
    destination: Destination,
    progress: Progress,
    jobs: int = 1,
    memory_budget: int | None = None,
    log_level: int = logging.WARNING,
    worker: Callable[[Connection, int, int], None] = serve,
) -> list[ModelResult]:
    """Export every BUILD plan, publish each that succeeds; results in catalog order.
    `worker` is the worker processes' entry point (tests replace it to inject crashes)."""
    results: dict[str, ModelResult] = {}
    for plan in plans:
        if plan.action is Action.SKIP:
            results[plan.model.name] = ModelResult(
                plan.model.name, Status.SKIPPED, plan.reason, manifest=plan.existing
            )
        elif plan.action is Action.FAIL:
            results[plan.model.name] = ModelResult(plan.model.name, Status.FAILED, plan.reason)
            progress.finished(results[plan.model.name])
    to_build = [p for p in plans if p.action is Action.BUILD]
    if to_build:
        budget = memory_budget if memory_budget is not None else available_memory()
        scheduler = _Scheduler(to_build, destination, progress, jobs, budget, log_level, worker)
        for result in scheduler.run():
            results[result.name] = result
    return [results[p.model.name] for p in plans]


class _Scheduler:
    def __init__(
        self,
        plans: list[PlannedModel],
        destination: Destination,
        progress: Progress,
        jobs: int,
        budget: int,
        log_level: int,
        worker: Callable[[Connection, int, int], None] = serve,
    ) -> None:
        self.worker_target = worker
        self.destination = destination
        self.progress = progress
        self.jobs = max(1, jobs)
        self.budget = budget
        self.log_level = log_level
        # Largest first: the long exports start early and small ones fill the gaps.
        self.pending = sorted(plans, key=lambda p: -p.parameter_count)
        self.threads = max(1, (os.cpu_count() or 1) // min(self.jobs, len(plans)))
        self.context = multiprocessing.get_context("spawn")  # never fork a process holding torch
        self.workers: list[_Worker] = []
        self.repository = destination.export_repository()
        self.overwrite = isinstance(destination, LocalRepository)

    @property
    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.plan is not None]

    def run(self) -> list[ModelResult]:
        results: list[ModelResult] = []
        try:
            while self.pending or self.busy:
                self._start_what_fits()
                busy = self.busy
                ready = wait(
                    [w.connection for w in busy] + [w.process.sentinel for w in busy],
                    timeout=TICK_S,
                )
                for worker in busy:
                    outcome = None
                    if worker.connection in ready:
                        # EOF: the process died mid-export (its exit code is reported).
                        with contextlib.suppress(EOFError, OSError):
                            outcome = worker.connection.recv()
                    if outcome is None and worker.process.sentinel not in ready:
                        continue
                    if outcome is None:
                        worker.process.join(timeout=10)
                        self.workers.remove(worker)
                    result = self._finish(worker, outcome)
                    worker.plan = None
                    results.append(result)
                    self.progress.finished(result)
                self.progress.tick()
        finally:
            self._stop_workers()
        return results

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.plan is None:
                with contextlib.suppress(OSError):
                    worker.connection.send(None)
            else:  # interrupted mid-export: leave nothing running
                worker.process.terminate()
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join(timeout=10)
            worker.connection.close()
        self.workers = []

    def _start_what_fits(self) -> None:
        while True:
            running = [w.estimate for w in self.busy]
            pending = [export_memory_estimate(p.parameter_count) for p in self.pending]
            index = next_to_start(pending, running, self.jobs, self.budget)
            if index is None:
                return
            plan, estimate = self.pending.pop(index), pending[index]
            if estimate > self.budget:
                log.warning(
                    "exporting %s may need ~%d MiB, more than the %d MiB budget; running it alone",
                    plan.model.name,
                    estimate >> 20,
                    self.budget >> 20,
                )
            self._start(plan, estimate)

    def _idle_worker(self) -> _Worker:
        for worker in self.workers:
            if worker.plan is None and worker.process.is_alive():
                return worker
        parent, child = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=self.worker_target,
            args=(child, self.threads, self.log_level),
            name=f"shoal-export-{len(self.workers) + 1}",
        )
        process.start()
        child.close()  # the parent keeps only its end: EOF when the worker dies
        worker = _Worker(process, parent)
        self.workers.append(worker)
        return worker

    def _start(self, plan: PlannedModel, estimate: int) -> None:
        options = replace(
            plan.model.export,
            overwrite=self.overwrite,
            version=self.destination.next_version(plan.model.name),
        )
        worker = self._idle_worker()
        worker.connection.send(
            ExportJob(plan.model.name, plan.model.source, self.repository, options)
        )
        worker.plan, worker.started, worker.estimate = plan, time.monotonic(), estimate
        self.progress.started(plan.model.name, plan.reason, len(self.busy), len(self.pending))

    def _finish(self, worker: _Worker, outcome: ExportOutcome | None) -> ModelResult:
        assert worker.plan is not None
        name = worker.plan.model.name
        elapsed = time.monotonic() - worker.started
        if outcome is None:
            code = worker.process.exitcode
            why = " (killed: out of memory?)" if code == -9 else ""
            return ModelResult(
                name, Status.FAILED, f"the export process exited with {code}{why}", elapsed
            )
        if not outcome.ok:
            if outcome.detail:
                log.error("export of %s failed unexpectedly:\n%s", name, outcome.detail)
            return ModelResult(name, Status.FAILED, outcome.error or "failed", elapsed)
        manifest = Manifest.parse(outcome.manifest_json or "", f"the manifest of {name}")
        try:
            self.destination.publish(name)
        except Exception as exc:  # noqa: BLE001 - object-store errors vary by backend
            log.debug("publishing %s failed", name, exc_info=True)
            return ModelResult(
                name, Status.FAILED, f"publishing failed: {type(exc).__name__}: {exc}", elapsed
            )
        return ModelResult(name, Status.BUILT, worker.plan.reason, elapsed, manifest)
