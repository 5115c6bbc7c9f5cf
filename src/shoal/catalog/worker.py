"""One export, run in its own process (spawned by execution.py).

A fresh process per model: torch export is CPU-heavy and not re-entrant, a crash (or the OOM
killer) takes down only this model's export, and its memory returns to the system when it ends.
The result travels back over a pipe as plain data (the manifest's JSON, or the error's message).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from shoal.exporter.options import ExportOptions

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ExportJob:
    name: str
    source: Path
    repository: Path
    options: ExportOptions
    threads: int  # torch / onnxruntime threads for this export (cores / parallel exports)
    log_level: int = logging.WARNING


@dataclass(frozen=True)
class ExportOutcome:
    name: str
    ok: bool
    elapsed_s: float
    manifest_json: str | None = None
    error: str | None = None
    detail: str | None = None  # a traceback for unexpected errors (not for ExportError)


def run_export(job: ExportJob, connection: Connection) -> None:
    """Process entry point: export, send one ExportOutcome, exit."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(job.threads)  # before torch/onnxruntime start their pools
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a catalog names local folders only
    if job.log_level > logging.DEBUG:  # progress bars of many processes garble a CI log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=job.log_level, format=f"%(asctime)s %(levelname)s [{job.name}] %(name)s: %(message)s"
    )
    started = time.monotonic()
    try:
        outcome = _export(job, started)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent as data
        outcome = ExportOutcome(
            job.name,
            ok=False,
            elapsed_s=time.monotonic() - started,
            error=f"{type(exc).__name__}: {exc}",
            detail=traceback.format_exc(),
        )
    connection.send(outcome)
    connection.close()


def _export(job: ExportJob, started: float) -> ExportOutcome:
    import torch

    from shoal.exporter.errors import ExportError
    from shoal.exporter.export import export_model

    torch.set_num_threads(job.threads)
    try:
        manifest = export_model(job.source, job.name, job.repository, job.options)
    except ExportError as exc:
        return ExportOutcome(job.name, False, time.monotonic() - started, error=str(exc))
    return ExportOutcome(job.name, True, time.monotonic() - started, manifest.to_json())
