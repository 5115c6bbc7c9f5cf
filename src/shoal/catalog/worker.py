"""An export worker process (spawned by execution.py): receives ExportJobs over a pipe, exports
them one at a time, answers each with an ExportOutcome, and exits on `None`.

Processes, not threads: torch export is CPU-heavy and not re-entrant, and a crash (or the OOM
killer) takes down only the export running in that process. A worker serves several exports in
turn because importing torch and transformers costs 5-15 s per process on small machines, more
than a tiny model's export. Results travel as plain data (manifest JSON, or the error message).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from shoal.exporter.options import ExportOptions
from shoal.logging_setup import configure_logging

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ExportJob:
    name: str
    source: Path
    repository: Path
    options: ExportOptions


@dataclass(frozen=True)
class ExportOutcome:
    name: str
    ok: bool
    elapsed_s: float
    manifest_json: str | None = None
    error: str | None = None
    detail: str | None = None  # a traceback for unexpected errors (not for ExportError)


def serve(connection: Connection, threads: int, log_level: int) -> None:
    """Process entry point. `threads`: torch/onnxruntime threads (cores / parallel exports)."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)  # before torch/onnxruntime start their pools
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a catalog names local folders only
    verbose = log_level <= logging.DEBUG
    if not verbose:  # the warnings of many processes garble a CI log and the live table
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    configure_logging(
        verbose,
        shoal_level=log_level,
        fmt="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
    )
    import torch

    from shoal.model_repository.install import sigterm_as_interrupt

    torch.set_num_threads(threads)
    # The parent stops a busy worker with SIGTERM (an interrupted build): the export then unwinds
    # as on Ctrl-C, removing its staging folder, and the process exits quietly.
    with contextlib.suppress(KeyboardInterrupt), sigterm_as_interrupt():
        while True:
            try:
                job = connection.recv()
            except EOFError:  # the parent is gone
                return
            if job is None:
                return
            connection.send(run_job(job))


def run_job(job: ExportJob) -> ExportOutcome:
    started = time.monotonic()
    try:
        from shoal.exporter.errors import ExportError
        from shoal.exporter.export import export_model

        try:
            manifest = export_model(job.source, job.name, job.repository, job.options)
        except ExportError as exc:
            return ExportOutcome(job.name, False, time.monotonic() - started, error=str(exc))
        return ExportOutcome(job.name, True, time.monotonic() - started, manifest.to_json())
    except Exception as exc:  # noqa: BLE001 - every failure must reach the parent as data
        return ExportOutcome(
            job.name,
            ok=False,
            elapsed_s=time.monotonic() - started,
            error=f"{type(exc).__name__}: {exc}",
            detail=traceback.format_exc(),
        )
