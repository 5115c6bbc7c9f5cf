"""A stand-in for the exporter while `shoal.exporter.export_model` is not there yet: exports tiny
models to ONNX with torch and writes their entries through `write_entry`, so that the Triton steps
can be tested end to end: a BERT embedder (mean pooling, right padding, prefixes), a Qwen2 embedder
(last-token pooling, LEFT padding) and a BERT cross-encoder (pairs, one score). To be replaced by
the exporter's export_model."""

from __future__ import annotations

from pathlib import Path

from shoal.contract import (
    INPUT_QUERY,
    INPUT_TEXT,
    INPUT_TEXT_TYPE,
    OUTPUT_EMBEDDING,
    OUTPUT_SCORE,
    Runtime,
    Task,
)
from shoal.manifest import Manifest, ParityResult, TensorSpec
from shoal.model_repository.entry import EntryOptions, write_entry
from shoal.model_repository.layout import EntryLayout

MAX_LENGTH = 32


# family -> (task, pooling, graph output, takes token_type_ids)
FAMILIES = {
    "bert": (Task.EMBED, "mean", "hidden_states", True),
    "qwen2": (Task.EMBED, "last-token", "hidden_states", False),
    "reranker": (Task.RERANK, None, "logits", True),
}


def _load(checkpoint: Path, family: str):
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if family == "reranker" else AutoModel
    return cls.from_pretrained(checkpoint, attn_implementation="eager").eval()


def export_tiny(checkpoint: Path, repository: Path, name: str, family: str) -> EntryLayout:
    import torch

    from shoal.tokenization import tokenization_config

    task, pooling, graph_output, with_types = FAMILIES[family]
    model = _load(checkpoint, family)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            out = self.model(**dict(zip(names, inputs, strict=True)))
            return out.logits if task is Task.RERANK else out.last_hidden_state

    example = tuple(torch.ones((2, 5), dtype=torch.long) for _ in names)
    onnx_path = repository.parent / f"{name}.onnx"
    per_token = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        Graph(),
        example,
        str(onnx_path),
        input_names=names,
        output_names=[graph_output],
        dynamic_axes={
            **{n: per_token for n in names},
            graph_output: {0: "batch"} if task is Task.RERANK else per_token,
        },
        opset_version=17,
        dynamo=False,
    )
    hidden = model.config.hidden_size
    embed = task is Task.EMBED
    tokenization = tokenization_config(
        checkpoint,
        max_length=MAX_LENGTH,
        token_type_ids=with_types,
        pairs=not embed,
        query_prefix="query: " if embed else "",
        document_prefix="passage: " if embed else "",
    )
    inputs = (
        [TensorSpec(INPUT_TEXT, "BYTES", [1]), TensorSpec(INPUT_TEXT_TYPE, "BYTES", [1])]
        if embed
        else [TensorSpec(INPUT_QUERY, "BYTES", [1]), TensorSpec(INPUT_TEXT, "BYTES", [1])]
    )
    manifest = Manifest(
        name=name,
        source=str(checkpoint),
        architecture="bert",
        model_type="bert",
        task=task.value,
        pooling=pooling,
        normalize=embed,
        max_length=MAX_LENGTH,
        dims=hidden if embed else None,
        dtype="fp32",
        runtime=Runtime.PORTABLE.value,
        padding_side=tokenization["padding_side"],
        inputs=inputs,
        outputs=[
            TensorSpec(OUTPUT_EMBEDDING, "FP32", [hidden])
            if embed
            else TensorSpec(OUTPUT_SCORE, "FP32", [1])
        ],
        encoder_inputs=[TensorSpec(n, "INT64", [-1]) for n in names],
        encoder_outputs=[TensorSpec(graph_output, "FP32", [-1, hidden] if embed else [1])],
        parameter_count=sum(p.numel() for p in model.parameters()),
        weights_bytes=onnx_path.stat().st_size,
        memory_bytes=onnx_path.stat().st_size * 2,
        max_batch_size=8,
        fused_attention=0,
        onnx_opset=17,
        sha256={},
        source_sha256="",
        parity=[ParityResult("fp32", "min_cosine", 1.0, 0.99999, True)],
        prefixes=tokenization["prefixes"],
        extra={
            "tokenization": tokenization,
            "postprocessing": {"pooling": pooling, "normalize": embed, "dims": None},
        },
    )
    options = EntryOptions(encode_threads=1, max_text_bytes=4096)
    return write_entry(repository, manifest, onnx_path, checkpoint, options)


def reference_embeddings(
    checkpoint: Path, texts: list[str], prefix: str = "passage: ", family: str = "bert"
):
    """PyTorch: each text alone (no padding), pooled, normalized."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = _load(checkpoint, family)
    vectors = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(
                prefix + text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state[0]
            pooled = hidden[-1] if FAMILIES[family][1] == "last-token" else hidden.mean(0)
            vectors.append(torch.nn.functional.normalize(pooled, dim=0))
    return torch.stack(vectors).numpy()


def reference_scores(checkpoint: Path, queries: list[str], documents: list[str]):
    """PyTorch cross-encoder: each pair alone, the first logit."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = _load(checkpoint, "reranker")
    with torch.no_grad():
        return [
            float(
                # Batch form: a single-pair call drops an empty document (HF's `if text_pair`),
                # while cross-encoders (sentence-transformers) always tokenize lists of pairs.
                model(
                    **tokenizer(
                        [q], [d], truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
                    )
                ).logits[0, 0]
            )
            for q, d in zip(queries, documents, strict=True)
        ]
