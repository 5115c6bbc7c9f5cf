"""Which catalog models need exporting: compare each model's input hash with the entry at DEST.

Called by `shoal build` after validation, before any export. A model is skipped only when the
entry at the destination has a manifest whose `source_sha256` equals the hash of the model's inputs
now (checkpoint files + export options + tool versions, computed by the exporter's own
`source_hash`, so the two can never disagree) AND the entry is intact: `shoal repo check` for a
local repository; for an object store, every file the manifest lists is present (see
publishing.RemoteRepository.entry_problems).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from shoal.catalog.publishing import Destination
from shoal.catalog.schema import CatalogModel
from shoal.manifest import Manifest

log = logging.getLogger(__name__)


class Action(StrEnum):
    BUILD = "build"
    SKIP = "skip"
    FAIL = "fail"  # the inputs cannot even be hashed (a checkpoint that is not a model folder)


@dataclass(frozen=True)
class PlannedModel:
    model: CatalogModel
    action: Action
    reason: str  # why: "new", "inputs changed", "entry broken: ...", "unchanged", the error
    source_sha256: str | None = None
    existing: Manifest | None = None  # the manifest at DEST, for skipped models
    parameter_count: int = 0  # of the checkpoint, for the export memory estimate


def input_hash(model: CatalogModel) -> tuple[str, int]:
    """The exporter's source hash for this model's inputs, and the checkpoint's parameter count.
    Raises ExportError when the checkpoint cannot have what the model asks (task, dims, max length,
    family): the exporter's own planning, which reads config.json and the tokenizer, not torch."""
    from shoal.contract import Task
    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint
    from shoal.exporter.errors import ExportError
    from shoal.exporter.fingerprint import source_hash  # the exporter's own, torch-free

    checkpoint = inspect_checkpoint(model.source)
    plan = detect_adapter(checkpoint, model.export.family, model.export.task).plan(model.export)
    if plan.task == Task.IMAGE_TEXT:  # two entries per model: not yet planned and published
        raise ExportError(
            f"{checkpoint.path} is an image-text model ({plan.family}), which exports as two "
            "entries (NAME and NAME-image): catalogs do not build those yet; export it with "
            "`shoal export`"
        )
    parameters = sum(
        parameter_count(checkpoint.path / f)
        for f in checkpoint.files
        if f.endswith(WEIGHT_SUFFIXES)
    )
    return source_hash(checkpoint.content_sha256(), model.export), parameters


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def parameter_count(path: Path) -> int:
    """Parameters stored in a weights file: exact from a safetensors header (shapes), else the
    file size over 4 bytes (fp32 pickles). Reads only the header, never the tensors."""
    if path.suffix == ".safetensors":
        try:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
            return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            pass  # inspect_checkpoint already vouched for the file; fall back to its size
    return path.stat().st_size // 4


def plan_model(model: CatalogModel, destination: Destination, force: bool = False) -> PlannedModel:
    from shoal.exporter.errors import ExportError

    try:
        digest, parameters = input_hash(model)
    except (ExportError, OSError) as exc:
        return PlannedModel(model, Action.FAIL, str(exc))
    if force:
        return PlannedModel(model, Action.BUILD, "--force", digest, parameter_count=parameters)
    existing, problem = destination.read_manifest(model.name)
    if existing is None:
        reason = "new" if problem is None else f"entry unreadable: {problem}"
        return PlannedModel(model, Action.BUILD, reason, digest, parameter_count=parameters)
    if existing.source_sha256 != digest:
        return PlannedModel(
            model, Action.BUILD, "inputs changed", digest, parameter_count=parameters
        )
    problems = destination.entry_problems(model.name)
    if problems:
        reason = f"entry broken: {problems[0]}" + (
            f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        )
        return PlannedModel(model, Action.BUILD, reason, digest, parameter_count=parameters)
    return PlannedModel(model, Action.SKIP, "unchanged", digest, existing, parameters)


def plan_build(
    models: list[CatalogModel], destination: Destination, force: bool = False
) -> list[PlannedModel]:
    plans = [plan_model(m, destination, force) for m in models]
    for plan in plans:
        log.debug("plan %s: %s (%s)", plan.model.name, plan.action, plan.reason)
    return plans
