"""A stand-in for the exporter while `shoal.exporter.export_model` is not there yet: exports a tiny
BERT embedder to ONNX with torch and writes its entry through `write_entry`, so that the Triton
steps can be tested end to end. To be replaced by the exporter's export_model."""

from __future__ import annotations

from pathlib import Path

from shoal.contract import INPUT_TEXT, INPUT_TEXT_TYPE, OUTPUT_EMBEDDING, Runtime, Task
from shoal.manifest import Manifest, ParityResult, TensorSpec
from shoal.model_repository.entry import EntryOptions, write_entry
from shoal.model_repository.layout import EntryLayout

MAX_LENGTH = 32


def export_bert_embedder(checkpoint: Path, repository: Path, name: str) -> EntryLayout:
    import torch
    from transformers import AutoModel

    from shoal.tokenization import tokenization_config

    model = AutoModel.from_pretrained(checkpoint, attn_implementation="eager").eval()

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((2, 5), dtype=torch.long) for _ in names)
    onnx_path = repository.parent / f"{name}.onnx"
    torch.onnx.export(
        Graph(),
        example,
        str(onnx_path),
        input_names=names,
        output_names=["hidden_states"],
        dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden_states"]},
        opset_version=17,
        dynamo=False,
    )
    hidden = model.config.hidden_size
    tokenization = tokenization_config(
        checkpoint,
        max_length=MAX_LENGTH,
        token_type_ids=True,
        query_prefix="query: ",
        document_prefix="passage: ",
    )
    manifest = Manifest(
        name=name,
        source=str(checkpoint),
        architecture="bert",
        model_type="bert",
        task=Task.EMBED.value,
        pooling="mean",
        normalize=True,
        max_length=MAX_LENGTH,
        dims=hidden,
        dtype="fp32",
        runtime=Runtime.PORTABLE.value,
        padding_side="right",
        inputs=[TensorSpec(INPUT_TEXT, "BYTES", [1]), TensorSpec(INPUT_TEXT_TYPE, "BYTES", [1])],
        outputs=[TensorSpec(OUTPUT_EMBEDDING, "FP32", [hidden])],
        encoder_inputs=[TensorSpec(n, "INT64", [-1]) for n in names],
        encoder_outputs=[TensorSpec("hidden_states", "FP32", [-1, hidden])],
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
            "postprocessing": {"pooling": "mean", "normalize": True, "dims": None},
        },
    )
    options = EntryOptions(encode_threads=1, max_text_bytes=4096)
    return write_entry(repository, manifest, onnx_path, checkpoint, options)


def reference_embeddings(checkpoint: Path, texts: list[str], prefix: str = "passage: "):
    """PyTorch: each text alone (no padding), mean pooled, normalized."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    vectors = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(
                prefix + text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state[0]
            vectors.append(torch.nn.functional.normalize(hidden.mean(0), dim=0))
    return torch.stack(vectors).numpy()
