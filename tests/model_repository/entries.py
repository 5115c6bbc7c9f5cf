"""Entries written by `write_entry` from the sample manifests, for repository-check tests: a real
(small) ONNX graph with the manifest's input and output names, and a real tokenizer.json."""

from __future__ import annotations

from pathlib import Path

from shoal.contract import Runtime, Task
from shoal.model_repository.entry import EntryOptions, write_entry
from shoal.model_repository.layout import EntryLayout
from tests.model_repository.sample_manifests import sample_manifest


def write_graph(manifest, path: Path) -> Path:
    """An ONNX graph with the manifest's encoder inputs and outputs (ReduceSum-free: each output is
    a Cast of input_ids, enough for tests that never run it)."""
    import onnx
    from onnx import TensorProto, helper

    dtypes = {"INT64": TensorProto.INT64, "FP32": TensorProto.FLOAT, "BOOL": TensorProto.BOOL}
    inputs = [
        helper.make_tensor_value_info(t.name, dtypes[t.dtype], ["batch", "tokens"])
        for t in manifest.encoder_inputs
    ]
    outputs, nodes = [], []
    for t in manifest.encoder_outputs:
        outputs.append(helper.make_tensor_value_info(t.name, dtypes[t.dtype], None))
        nodes.append(helper.make_node("Cast", ["input_ids"], [t.name], to=dtypes[t.dtype]))
    graph = helper.make_graph(nodes, "sample", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def write_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"[PAD]": 0, "[UNK]": 1, "fish": 2, "shoal": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"pad_token": "[PAD]"}\n')
    return folder


def write_sample_entry(
    repository: Path, task: Task, runtime: Runtime = Runtime.PORTABLE, name: str = ""
) -> EntryLayout:
    manifest = sample_manifest(task, runtime, name)
    sources = repository.parent / f"{repository.name}-sources-{manifest.name}"
    sources.mkdir(parents=True)
    onnx_path = write_graph(manifest, sources / "model.onnx")
    tokenizer = write_tokenizer(sources / "tokenizer")
    return write_entry(repository, manifest, onnx_path, tokenizer, EntryOptions())
