"""Worker entry points for scheduler tests (imported by spawned processes, so module-level).

They speak the real worker protocol (ExportJob in, ExportOutcome out, None to stop) without
torch: what a real export cannot be made to do on demand (crash mid-export) happens here.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.connection import Connection

from shoal.catalog.worker import ExportJob, ExportOutcome
from shoal.contract import Task
from tests.model_repository.sample_manifests import sample_manifest


def crash_on_names_starting_with_crash(
    connection: Connection, threads: int, log_level: int
) -> None:
    while True:
        job: ExportJob | None = connection.recv()
        if job is None:
            return
        if job.name.startswith("crash"):
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
        time.sleep(0.2)
        manifest = sample_manifest(Task.EMBED, name=job.name)
        manifest.extra["pid"] = os.getpid()  # which worker exported it
        outcome = ExportOutcome(job.name, True, 0.2, manifest.to_json())
        connection.send(outcome)
