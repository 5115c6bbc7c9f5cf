"""Hand-written manifests of every task, for tests that need no exported model (config rendering,
repository checks). The shapes follow what the exporter writes for the tiny test models."""

from __future__ import annotations

import dataclasses

from shoal.contract import (
    INPUT_IMAGE,
    INPUT_LABELS,
    INPUT_QUERY,
    INPUT_TEXT,
    INPUT_TEXT_TYPE,
    INPUT_THRESHOLD,
    OUTPUTS_BY_TASK,
    Runtime,
    Task,
)
from shoal.manifest import Manifest, ParityResult, TensorSpec

HIDDEN = 32
VOCAB = 400
DIMS = 16

_OUTPUT_SPECS = {
    "EMBEDDING": TensorSpec("EMBEDDING", "FP32", [DIMS]),
    "SCORE": TensorSpec("SCORE", "FP32", [1]),
    "SPARSE_INDICES": TensorSpec("SPARSE_INDICES", "INT64", [-1]),
    "SPARSE_VALUES": TensorSpec("SPARSE_VALUES", "FP32", [-1]),
    "COLBERT_VECTORS": TensorSpec("COLBERT_VECTORS", "FP32", [-1, DIMS]),
    "COLBERT_LENGTHS": TensorSpec("COLBERT_LENGTHS", "INT32", [1]),
    "ENTITIES": TensorSpec("ENTITIES", "BYTES", [1]),
}
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

_ENCODER_OUTPUTS = {
    Task.EMBED: [TensorSpec("hidden_states", "FP32", [-1, HIDDEN])],
    Task.RERANK: [TensorSpec("logits", "FP32", [1])],
    Task.COLBERT: [TensorSpec("token_vectors", "FP32", [-1, DIMS])],
    Task.SPARSE: [TensorSpec("sparse_weights", "FP32", [VOCAB])],
    Task.MULTI: [
        TensorSpec("hidden_states", "FP32", [-1, HIDDEN]),
        TensorSpec("token_weights", "FP32", [-1]),
        TensorSpec("colbert_vectors", "FP32", [-1, HIDDEN]),
    ],
    Task.EXTRACT: [TensorSpec("token_logits", "FP32", [-1, len(NER_LABELS)])],
    Task.EXTRACT_ZERO_SHOT: [TensorSpec("span_logits", "FP32", [-1, 4, -1])],
    Task.IMAGE_TEXT: [TensorSpec("embeddings", "FP32", [DIMS])],  # the text entry's
}


def zero_shot_manifest(manifest: Manifest) -> Manifest:
    """What the exporter writes for a GLiNER (extract-zero-shot): its inputs and span tensors."""
    tokenization = {
        "max_length": 64,
        "padding_side": "right",
        "pad_token_id": 0,
        "ent_token": "<<ENT>>",
        "sep_token": "<<SEP>>",
        "max_width": 4,
        "max_words": 64,
        "max_labels": 8,
        "subtoken_pooling": "first",
        "default_threshold": 0.5,
    }
    return dataclasses.replace(
        manifest,
        architecture="gliner",
        model_type="gliner",
        pooling=None,
        prefixes={},
        inputs=[
            TensorSpec(INPUT_TEXT, "BYTES", [1]),
            TensorSpec(INPUT_LABELS, "BYTES", [1]),
            TensorSpec(INPUT_THRESHOLD, "FP32", [1]),
        ],
        encoder_inputs=[
            TensorSpec("input_ids", "INT64", [-1]),
            TensorSpec("attention_mask", "INT64", [-1]),
            TensorSpec("words_mask", "INT64", [-1]),
            TensorSpec("text_lengths", "INT64", [1]),
            TensorSpec("span_idx", "INT64", [-1, 2]),
            TensorSpec("span_mask", "BOOL", [-1]),
        ],
        extra={
            "tokenization": tokenization,
            "postprocessing": {"flat_ner": True},
            "tensorrt_axis_scale": {"span_idx": 4, "span_mask": 4},
        },
    )


def sample_manifest(task: Task, runtime: Runtime = Runtime.PORTABLE, name: str = "") -> Manifest:
    inputs = [TensorSpec(INPUT_TEXT, "BYTES", [1])]
    if task is Task.RERANK:
        inputs.insert(0, TensorSpec(INPUT_QUERY, "BYTES", [1]))
    elif task not in (Task.EXTRACT, Task.IMAGE_TEXT):
        inputs.append(TensorSpec(INPUT_TEXT_TYPE, "BYTES", [1]))
    encoder_inputs = [
        TensorSpec("input_ids", "INT64", [-1]),
        TensorSpec("attention_mask", "INT64", [-1]),
        TensorSpec("token_type_ids", "INT64", [-1]),
    ]
    prefixes = {"query": "query: ", "document": "passage: "} if task is Task.EMBED else {}
    manifest = Manifest(
        name=name or f"tiny-{task.value}",
        source="/tmp/tiny",
        architecture="bert",
        model_type="bert",
        task=task.value,
        pooling="mean" if task in (Task.EMBED, Task.MULTI) else None,
        normalize=True,
        max_length=64,
        dims=DIMS if task in (Task.EMBED, Task.COLBERT, Task.MULTI) else None,
        dtype="fp32",
        runtime=runtime.value,
        padding_side="right",
        inputs=inputs,
        outputs=[_OUTPUT_SPECS[n] for n in OUTPUTS_BY_TASK[task]],
        encoder_inputs=encoder_inputs,
        encoder_outputs=_ENCODER_OUTPUTS[task],
        parameter_count=12345,
        weights_bytes=49380,
        memory_bytes=1 << 20,
        max_batch_size=8,
        fused_attention=2,
        onnx_opset=17,
        sha256={},
        source_sha256="0" * 64,
        parity=[ParityResult("fp32", "min_cosine", 0.999999, 0.99999, True)],
        prefixes=prefixes,
        extra={
            "tokenization": {
                "max_length": 64,
                "padding_side": "right",
                "pad_token_id": 0,
                "prefixes": prefixes,
                "pairs": task is Task.RERANK,
                "token_type_ids": True,
                "colbert": None,
                "token_info": (
                    {"unk_token_id": 1, "continuing_subword_prefix": "##"}
                    if task is Task.EXTRACT
                    else None
                ),
            },
            "postprocessing": {
                "pooling": "mean",
                "normalize": True,
                "dims": DIMS,
                **(
                    {"labels": NER_LABELS, "aggregation": "simple", "ignore_labels": ["O"]}
                    if task is Task.EXTRACT
                    else {}
                ),
            },
        },
    )
    return zero_shot_manifest(manifest) if task is Task.EXTRACT_ZERO_SHOT else manifest


IMAGE_SIZE = 32


def sample_image_manifest(runtime: Runtime = Runtime.PORTABLE, name: str = "") -> Manifest:
    """The image entry of an image-text export (IMAGE -> pixel values -> EMBEDDING)."""
    text = sample_manifest(Task.IMAGE_TEXT, runtime)
    return dataclasses.replace(
        text,
        name=name or "tiny-image-text-image",
        inputs=[TensorSpec(INPUT_IMAGE, "BYTES", [1])],
        encoder_inputs=[TensorSpec("pixel_values", "FP32", [3, IMAGE_SIZE, IMAGE_SIZE])],
        extra={
            "postprocessing": {"normalize": True, "dims": None},
            "image_preprocessing": {
                "resize": {"shortest_edge": IMAGE_SIZE},
                "resample": 3,
                "crop": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                "rescale_factor": 1 / 255,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "convert_rgb": True,
                "height": IMAGE_SIZE,
                "width": IMAGE_SIZE,
            },
        },
    )
