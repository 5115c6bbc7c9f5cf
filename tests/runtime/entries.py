"""Tiny embedder entries for the runtime's tests, written through the real export path when the
exporter is there (else the model-repository tests' stand-in exporter)."""

from __future__ import annotations

from pathlib import Path


def export_tiny_embedders(checkpoint: Path, repository: Path, names: list[str]) -> None:
    repository.mkdir(parents=True, exist_ok=True)
    try:
        from shoal.exporter import ExportOptions, export_model
    except ImportError:
        from tests.model_repository.private_export import export_bert_embedder

        for name in names:
            export_bert_embedder(checkpoint, repository, name)
        return
    for name in names:
        export_model(str(checkpoint), name, repository, ExportOptions(runtime="portable"))
