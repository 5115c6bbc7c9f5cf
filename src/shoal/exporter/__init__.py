"""Hugging Face encoders -> verified ONNX model-repository entries (see DESIGN.md, issue 2).

    from shoal.exporter import ExportOptions, export_model, verify_entry
    manifest = export_model("path/to/checkpoint", "minilm", Path("repo"), ExportOptions(dtype="int8"))
    results = verify_entry(Path("repo/minilm"))

Imports torch and transformers (the `export` extra) lazily: importing this package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.exporter.errors import ExportError, ParityError

if TYPE_CHECKING:
    from shoal.exporter.export import export_model, verify_entry
    from shoal.exporter.options import ExportOptions

__all__ = ["ExportError", "ExportOptions", "ParityError", "export_model", "verify_entry"]


def __getattr__(name: str) -> Any:
    if name in ("export_model", "verify_entry"):
        from shoal.exporter import export

        return getattr(export, name)
    if name == "ExportOptions":
        from shoal.exporter.options import ExportOptions

        return ExportOptions
    raise AttributeError(name)
