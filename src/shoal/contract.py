"""The one contract shared by every part of shoal: tasks, pooling modes, output kinds, and the
tensor names an application sees.

The exporter writes these names into the ONNX graph and the manifest, the model-repository
templates into `config.pbtxt`, the postprocess step computes them, and the operator and router
read them from manifests. Nothing here imports anything heavy: the operator image uses it too.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Task(StrEnum):
    """What an exported model answers."""

    EMBED = "embed"  # one dense vector per text
    RERANK = "rerank"  # one relevance score per (query, document) pair
    COLBERT = "colbert"  # one normalized vector per token (late interaction)
    SPARSE = "sparse"  # SPLADE-style lexical weights: (token id, weight) pairs
    MULTI = "multi"  # bge-m3: dense, sparse and ColBERT outputs from one pass
    EXTRACT = "extract"  # token classification: labelled character spans (entities) per text
    # GLiNER: entities of the labels named in each request (LABELS, THRESHOLD inputs)
    EXTRACT_ZERO_SHOT = "extract-zero-shot"
    # CLIP/SigLIP: images and texts into one space. One export writes two entries: `name` (TEXT)
    # and `name-image` (IMAGE), each answering EMBEDDING (see image_entry_name).
    IMAGE_TEXT = "image-text"


class Pooling(StrEnum):
    """How token states become one vector (dense embedders)."""

    CLS = "cls"  # first token
    MEAN = "mean"  # attention-mask-weighted mean
    LAST_TOKEN = "last-token"  # last non-padding token (decoder embedders)
    MAX = "max"  # element-wise max over non-padding tokens


class OutputKind(StrEnum):
    DENSE = "dense"  # FP32 [batch, dims]
    SCORE = "score"  # FP32 [batch, 1]
    SPARSE = "sparse"  # ragged: INT64 indices + FP32 values per text, padded; see SPARSE_* names
    MULTI_VECTOR = "multi-vector"  # ragged: FP32 [batch, tokens, dims] padded + lengths


class Aggregation(StrEnum):
    """How `extract` joins token predictions into entities (transformers' token-classification
    pipeline strategies of the same names)."""

    SIMPLE = "simple"  # adjacent tokens of one label type form an entity; score = their mean
    FIRST = "first"  # each word takes its first token's label, then as simple
    MAX = "max"  # each word takes the label of its most confident token, then as simple


class PaddingSide(StrEnum):
    RIGHT = "right"
    LEFT = "left"


class Dtype(StrEnum):
    """Precision of the exported encoder graph."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # dynamic quantization, for CPU pools


class Runtime(StrEnum):
    """How the encode step runs inside Triton."""

    ONNXRUNTIME = (
        "onnxruntime"  # Triton's onnxruntime backend (NVIDIA images; CUDA/TensorRT on GPU)
    )
    PORTABLE = "portable"  # the same ONNX on onnxruntime inside a python-backend model


# Tensor names an application uses with plain tritonclient (ensemble inputs/outputs).
INPUT_TEXT = "TEXT"  # BYTES [batch, 1]: UTF-8 texts (documents, or the texts to embed)
# extract-zero-shot: BYTES [batch, 1], one JSON list of label strings per text
INPUT_LABELS = "LABELS"
# extract-zero-shot, optional: FP32 [batch, 1], the score entities must exceed (0..1)
INPUT_THRESHOLD = "THRESHOLD"
INPUT_QUERY = "QUERY"  # BYTES [batch, 1]: rerankers pair QUERY[i] with TEXT[i]
INPUT_TEXT_TYPE = (
    "TEXT_TYPE"  # optional BYTES [batch, 1]: "query" or "document" (prefixes, markers)
)

# BYTES [batch, 1]: image files (JPEG, PNG, WebP) for the image entry of an image-text export
INPUT_IMAGE = "IMAGE"

OUTPUT_EMBEDDING = "EMBEDDING"  # FP32 [batch, dims]
OUTPUT_SCORE = "SCORE"  # FP32 [batch, 1]
OUTPUT_SPARSE_INDICES = "SPARSE_INDICES"  # INT64 [batch, n]: token ids, padded with -1
OUTPUT_SPARSE_VALUES = "SPARSE_VALUES"  # FP32 [batch, n]: weights, padded with 0
OUTPUT_COLBERT_VECTORS = "COLBERT_VECTORS"  # FP32 [batch, tokens, dims], padded with 0
OUTPUT_COLBERT_LENGTHS = "COLBERT_LENGTHS"  # INT32 [batch, 1]: valid rows of COLBERT_VECTORS
# BYTES [batch, 1]: a UTF-8 JSON list per text of {"label", "score", "start", "end", "text"},
# start/end being character offsets into the text (docs/tasks.md)
OUTPUT_ENTITIES = "ENTITIES"

OUTPUTS_BY_TASK: dict[Task, tuple[str, ...]] = {
    Task.EMBED: (OUTPUT_EMBEDDING,),
    Task.RERANK: (OUTPUT_SCORE,),
    Task.COLBERT: (OUTPUT_COLBERT_VECTORS, OUTPUT_COLBERT_LENGTHS),
    Task.SPARSE: (OUTPUT_SPARSE_INDICES, OUTPUT_SPARSE_VALUES),
    Task.MULTI: (
        OUTPUT_EMBEDDING,
        OUTPUT_SPARSE_INDICES,
        OUTPUT_SPARSE_VALUES,
        OUTPUT_COLBERT_VECTORS,
        OUTPUT_COLBERT_LENGTHS,
    ),
    Task.EXTRACT: (OUTPUT_ENTITIES,),
    Task.EXTRACT_ZERO_SHOT: (OUTPUT_ENTITIES,),
    Task.IMAGE_TEXT: (OUTPUT_EMBEDDING,),
}

# An image-text export's image tower is served as its own entry, `<name>-image` (EMBEDDING from
# IMAGE), beside `<name>` (EMBEDDING from TEXT): one Triton ensemble per input kind.
IMAGE_ENTRY_SUFFIX = "-image"


def image_entry_name(name: str) -> str:
    """The entry serving the image tower of image-text export `name`."""
    return f"{name}{IMAGE_ENTRY_SUFFIX}"

# Step names inside a model-repository entry: the ensemble is named after the model.
STEP_TOKENIZE = "tokenize"
STEP_ENCODE = "encode"
STEP_POSTPROCESS = "postprocess"


def step_name(model: str, step: str) -> str:
    """`<model>__<step>`, the Triton model name of one step of an ensemble."""
    return f"{model}__{step}"


# The one rule for an entry's name, shared by every command (export, build, serve, repo, the
# manifest reader). It is a Triton model name and a folder name: shoal adds `__<step>` to it, so
# it may not hold `__` itself. Checked with fullmatch: `$` would let a trailing newline through.
MODEL_NAME_MAX_LENGTH = 100
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def model_name_problem(name: object) -> str | None:
    """Why `name` cannot name an entry (one sentence with the rule), or None when it can."""
    if (
        isinstance(name, str)
        and _MODEL_NAME.fullmatch(name)
        and "__" not in name
        and len(name) <= MODEL_NAME_MAX_LENGTH
    ):
        return None
    return (
        f"model name {name!r} is not allowed: use letters, digits, '.', '-', '_' (start with a "
        f"letter or digit, at most {MODEL_NAME_MAX_LENGTH} characters), without '__' (shoal names "
        "steps <name>__tokenize etc.)"
    )


MANIFEST_FILENAME = "shoal.json"  # lives in the ensemble's folder: REPO/<model>/shoal.json
MANIFEST_SCHEMA_VERSION = 1

# Flags every Triton serving shoal's entries runs with (`shoal serve` and the operator's pods).
# Every config.pbtxt shoal writes is complete, so no backend needs to auto-complete one. With
# auto-completion on, the python backend starts a throwaway stub process per model only to ask
# it, and stopping a stub costs its one-second health check: loading an encode step took 1.9 s
# instead of 0.55 s on 2 cores (benchmarks/router_cold_start.py).
TRITON_SERVING_FLAGS = ("--disable-auto-complete-config",)

# LoRA adapters on one base encoder (docs/lora.md): an entry exported with adapters has this
# optional ensemble input, BYTES [batch, 1], naming each row's adapter; absent or "" = the base.
INPUT_ADAPTER = "ADAPTER"
ADAPTER_NAME_MAX_LENGTH = 64


def adapter_name_problem(name: object) -> str | None:
    """Why `name` cannot name a LoRA adapter of an entry (one sentence with the rule), or None.
    The characters of a model name (`__` allowed: an adapter name is no Triton model's)."""
    fits = isinstance(name, str) and len(name) <= ADAPTER_NAME_MAX_LENGTH
    if fits and _MODEL_NAME.fullmatch(name):
        return None
    return (
        f"adapter name {name!r} is not allowed: use letters, digits, '.', '-', '_' (start with a "
        f"letter or digit, at most {ADAPTER_NAME_MAX_LENGTH} characters)"
    )
