"""Tiny model-repository entries for the operator's tests: real shoal entries (the three python
steps, the ensemble and a manifest, written by shoal's own `write_entry`, so they pass
`shoal repo check` as the operator's pre-load check demands), around a one-MatMul ONNX graph
and a word-level tokenizer. The operator's tests are about placement, not model math: the
manifest says how much memory each entry needs.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from shoal.contract import Task
from shoal.model_repository.entry import EntryOptions
from shoal.model_repository.entry import write_entry as write_layout
from shoal.model_repository.layout import EntryLayout
from tests.model_repository.entries import write_tokenizer
from tests.model_repository.sample_manifests import DIMS, HIDDEN, sample_manifest

WEIGHTS = np.arange(1, HIDDEN + 1, dtype=np.float32)
EMBEDDING_DIMS = DIMS  # what `infer` gets back from every entry


def write_entry(
    repository: Path, model: str, memory_bytes: int, broken: str | None = None, version: int = 1
) -> None:
    """An entry whose manifest says it needs `memory_bytes` (replacing one of that name), in
    Triton version folder `version` (a re-export writes the next one). `broken`: an operator
    name onnxruntime does not know, put in the graph: the entry passes `shoal repo check` but
    its encode step fails to load in Triton, naming it."""
    manifest = dataclasses.replace(
        sample_manifest(Task.EMBED, name=model),
        memory_bytes=memory_bytes,
        weights_bytes=memory_bytes // 2,
        version=version,
    )
    sources = repository.parent / f"{repository.name}-sources" / model
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    onnx_path = sources / "model.onnx"
    _write_graph(onnx_path, broken)
    tokenizer = write_tokenizer(sources / "tokenizer")
    for directory in EntryLayout(repository, model).dirs:
        shutil.rmtree(directory, ignore_errors=True)
    write_layout(repository, manifest, onnx_path, tokenizer, EntryOptions())


def _write_graph(path: Path, unknown_op: str | None = None) -> None:
    """hidden_states[b, t, :] = input_ids[b, t] * WEIGHTS (token_type_ids and the mask unused)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info(
        "hidden_states", TensorProto.FLOAT, ["batch", "tokens", HIDDEN]
    )
    nodes = [
        helper.make_node(unknown_op or "Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids", "axis"], ["column"]),
        helper.make_node("MatMul", ["column", "weights"], ["hidden_states"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis"),
        numpy_helper.from_array(WEIGHTS.reshape(1, HIDDEN), "weights"),
    ]
    graph = helper.make_graph(nodes, "tiny", inputs, [output], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
