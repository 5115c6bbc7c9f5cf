"""The content hash of an export's inputs (checkpoint files + options + tool versions).

Stored in the manifest as `source_sha256`; `shoal build` compares it to skip unchanged models.
Kept free of torch/transformers imports so that planning a build stays fast.
"""

from __future__ import annotations

import hashlib
import json
import platform
from contextlib import suppress
from importlib import metadata
from pathlib import Path

from shoal.exporter.options import ExportOptions

VERSIONED_TOOLS = ("shoal", "torch", "transformers", "tokenizers", "onnx", "onnxruntime")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for tool in VERSIONED_TOOLS:
        with suppress(metadata.PackageNotFoundError):
            versions[tool] = metadata.version(tool)
    return versions


def source_hash(checkpoint_hash: str, options: ExportOptions) -> str:
    payload = json.dumps(
        {
            "checkpoint": checkpoint_hash,
            "options": options.hashed_dict(),
            "versions": tool_versions(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def adapters_hash(checkpoint_hash: str, adapters: tuple[tuple[str, str], ...]) -> str:
    """`checkpoint_hash` extended with the bytes of every LoRA adapter's files (names and
    content), so that a retrained adapter changes `source_sha256`; unchanged without adapters."""
    if not adapters:
        return checkpoint_hash
    digest = hashlib.sha256(checkpoint_hash.encode())
    for name, folder in adapters:
        digest.update(name.encode())
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
