"""tokenization.py, postprocessing.py and image_preprocessing.py are copied verbatim into Triton python-backend steps,
where shoal is not installed: they may import only the stdlib and what the steps' image has."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import shoal.image_preprocessing
import shoal.postprocessing
import shoal.span_extraction
import shoal.tokenization

STDLIB = set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        (shoal.tokenization, STDLIB | {"numpy", "tokenizers"}),
        (shoal.postprocessing, STDLIB | {"numpy"}),
        (shoal.span_extraction, STDLIB | {"numpy", "tokenizers"}),
        (shoal.image_preprocessing, STDLIB | {"numpy", "PIL"}),
    ],
    ids=["tokenization", "postprocessing", "span_extraction", "image_preprocessing"],
)
def test_module_imports_nothing_from_shoal(module, allowed: set[str]) -> None:
    source = Path(module.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= allowed
