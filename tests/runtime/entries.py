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


def export_embedder_and_reranker(
    tiny_model, repository: Path, *, max_batch_size: int, max_text_bytes: int
) -> None:
    """`embedder` (tiny BERT) and `reranker` (tiny cross-encoder), portable runtime, with small
    limits so that tests reach them with a few short texts."""
    from shoal.exporter import ExportOptions, export_model
    from shoal.model_repository.entry import EntryOptions

    options = ExportOptions(
        runtime="portable",
        max_length=32,
        max_batch_size=max_batch_size,
        entry=EntryOptions(encode_threads=1, max_text_bytes=max_text_bytes),
    )
    for family, name in (("bert", "embedder"), ("reranker", "reranker")):
        export_model(str(tiny_model(family)), name, repository, options)


# The client tests' entries (tests/runtime/test_client_commands.py,
# tests/router/test_client_mistakes.py): small limits, reached with a few short texts.
CLIENT_MAX_BATCH_SIZE = 4
CLIENT_MAX_TEXT_BYTES = 1024
