"""Encoder graph outputs -> the tensors an application gets (names from shoal.contract).

Used by the exporter (parity, verification) and copied verbatim into the postprocess step of every
Triton model-repository entry, so it imports only the standard library and numpy (never `shoal`:
the output names below are spelled out and a unit test checks them against shoal.contract).

The exported graph does the heavy work that shrinks what travels between steps (SPLADE's
log1p(relu(logits)) max-pooled over the sequence to [B, vocab]; bge-m3's sparse and ColBERT heads);
this module does the cheap, configurable rest: pooling, normalization, Matryoshka truncation,
sparse extraction, ColBERT masking and per-token normalization.

Graph outputs by task (names the exporter gives the ONNX outputs):
    embed    hidden_states [B, T, H] float
    rerank   logits [B, labels] float
    colbert  token_vectors [B, T, D] float (projection applied, not normalized)
    sparse   sparse_weights [B, vocab] float (already max-pooled over tokens, >= 0)
    multi    hidden_states [B, T, H], token_weights [B, T] (relu(sparse head)),
             colbert_vectors [B, T-1, H] (projection of tokens 1.., not normalized)
    extract  token_logits [B, T, labels] float; with the texts and the tokenize step's
             token_offsets [B, T, 2] and word_ids [B, T] (`inputs`)
    image-text  embeddings [B, D] float: one tower's projected vector (CLIP/SigLIP
             get_text_features / get_image_features); image entries pass no ids or mask

Settings (`config`, stored in the manifest as extra["postprocessing"]):
    pooling           "cls" | "mean" | "last-token" | "max" (embed, multi)
    normalize         bool: L2-normalize dense vectors (after truncation)
    dims              int | null: Matryoshka truncation of dense vectors
    score_activation  "none" | "sigmoid" (rerank)
    special_token_ids list[int]: never reported as sparse terms (CLS, SEP, PAD, ...)
    colbert           {"query_marker_id", "document_marker_id", "mask_token_id",
                       "skiplist_ids", "skip_first_token"}: all optional. Query rows keep their
                       [MASK] augmentation tokens; document rows (marker at position 1) drop
                       skiplist ids (punctuation); skip_first_token drops [CLS] (bge-m3).
    labels            list[str]: the label of each logit (extract; config.json's id2label)
    aggregation       "simple" | "first" | "max" (extract; as transformers' pipeline)
    ignore_labels     list[str]: labels never reported as entities (extract; default ["O"])
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

# Names an application sees (mirror shoal.contract; checked by a unit test).
OUTPUT_EMBEDDING = "EMBEDDING"
OUTPUT_SCORE = "SCORE"
OUTPUT_SPARSE_INDICES = "SPARSE_INDICES"
OUTPUT_SPARSE_VALUES = "SPARSE_VALUES"
OUTPUT_COLBERT_VECTORS = "COLBERT_VECTORS"
OUTPUT_COLBERT_LENGTHS = "COLBERT_LENGTHS"
OUTPUT_ENTITIES = "ENTITIES"
INPUT_TEXT = "TEXT"

# Names of the encoder graph's outputs.
GRAPH_HIDDEN_STATES = "hidden_states"
GRAPH_LOGITS = "logits"
GRAPH_TOKEN_VECTORS = "token_vectors"
GRAPH_SPARSE_WEIGHTS = "sparse_weights"
GRAPH_TOKEN_WEIGHTS = "token_weights"
GRAPH_COLBERT_VECTORS = "colbert_vectors"
GRAPH_TOKEN_LOGITS = "token_logits"
GRAPH_EMBEDDINGS = "embeddings"
# What the tokenize step adds for `extract` (names as in shoal.tokenization).
TOKEN_OFFSETS = "token_offsets"
WORD_IDS = "word_ids"

GRAPH_OUTPUTS_BY_TASK: dict[str, tuple[str, ...]] = {
    "embed": (GRAPH_HIDDEN_STATES,),
    "rerank": (GRAPH_LOGITS,),
    "colbert": (GRAPH_TOKEN_VECTORS,),
    "sparse": (GRAPH_SPARSE_WEIGHTS,),
    "multi": (GRAPH_HIDDEN_STATES, GRAPH_TOKEN_WEIGHTS, GRAPH_COLBERT_VECTORS),
    "extract": (GRAPH_TOKEN_LOGITS,),
    "image-text": (GRAPH_EMBEDDINGS,),
}
# Inputs of the postprocess step besides ids, mask and the graph outputs, by task.
STEP_INPUTS_BY_TASK: dict[str, tuple[str, ...]] = {
    "extract": (INPUT_TEXT, TOKEN_OFFSETS, WORD_IDS),
}
AGGREGATIONS = ("simple", "first", "max")

POOLINGS = ("cls", "mean", "last-token", "max")
_EPS = 1e-12  # as torch.nn.functional.normalize


class PostprocessError(ValueError):
    """Graph outputs or settings that do not fit together; the message names what."""


def postprocess(
    task: str,
    graph_outputs: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    config: dict[str, Any],
    inputs: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays keyed by the contract's output names for `task`. `inputs`: the task's
    STEP_INPUTS_BY_TASK (TEXT as a list of str)."""
    if task not in GRAPH_OUTPUTS_BY_TASK:
        raise PostprocessError(f"unknown task {task!r}; known: {sorted(GRAPH_OUTPUTS_BY_TASK)}")
    missing = [n for n in GRAPH_OUTPUTS_BY_TASK[task] if n not in graph_outputs]
    if missing:
        raise PostprocessError(
            f"task {task!r} needs graph outputs {missing}; got {sorted(graph_outputs)}"
        )
    if task == "image-text":  # pooled and projected in the graph; no tokens needed
        return {OUTPUT_EMBEDDING: embeddings(graph_outputs[GRAPH_EMBEDDINGS], config)}
    input_ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(bool)
    if input_ids.shape != mask.shape or input_ids.ndim != 2:
        raise PostprocessError(
            f"input_ids {input_ids.shape} and attention_mask {mask.shape} must both be [batch, tokens]"
        )

    if task == "embed":
        return {OUTPUT_EMBEDDING: dense(graph_outputs[GRAPH_HIDDEN_STATES], mask, config)}
    if task == "rerank":
        return {OUTPUT_SCORE: scores(graph_outputs[GRAPH_LOGITS], config)}
    if task == "extract":
        return {OUTPUT_ENTITIES: entities(graph_outputs[GRAPH_TOKEN_LOGITS], inputs or {}, config)}
    if task == "sparse":
        indices, values = sparse_from_vocab_weights(
            graph_outputs[GRAPH_SPARSE_WEIGHTS], config.get("special_token_ids", ())
        )
        return {OUTPUT_SPARSE_INDICES: indices, OUTPUT_SPARSE_VALUES: values}
    colbert_config = config.get("colbert") or {}
    if task == "colbert":
        keep = colbert_keep_mask(input_ids, mask, colbert_config)
        vectors, lengths = multi_vectors(graph_outputs[GRAPH_TOKEN_VECTORS], keep)
        return {OUTPUT_COLBERT_VECTORS: vectors, OUTPUT_COLBERT_LENGTHS: lengths}
    # multi (bge-m3): dense + sparse + ColBERT from one pass
    indices, values = sparse_from_token_weights(
        graph_outputs[GRAPH_TOKEN_WEIGHTS], input_ids, mask, config.get("special_token_ids", ())
    )
    # The graph projects tokens 1.. (FlagEmbedding drops [CLS] from the ColBERT vectors).
    keep = colbert_keep_mask(input_ids, mask, colbert_config)
    vectors, lengths = multi_vectors(graph_outputs[GRAPH_COLBERT_VECTORS], keep[:, 1:])
    return {
        OUTPUT_EMBEDDING: dense(graph_outputs[GRAPH_HIDDEN_STATES], mask, config),
        OUTPUT_SPARSE_INDICES: indices,
        OUTPUT_SPARSE_VALUES: values,
        OUTPUT_COLBERT_VECTORS: vectors,
        OUTPUT_COLBERT_LENGTHS: lengths,
    }


# ------------------------------------------------------------------ dense


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, _EPS)).astype(np.float32)


def first_token_index(mask: np.ndarray) -> np.ndarray:
    """Index of the first attended token per row (0 for right padding; after left padding)."""
    return np.argmax(mask, axis=1)


def last_token_index(mask: np.ndarray) -> np.ndarray:
    """Index of the last attended token per row, for left AND right padding."""
    width = mask.shape[1]
    return width - 1 - np.argmax(mask[:, ::-1], axis=1)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """[B, T, H] token states -> [B, H] float32. Rows with no attended token give zeros."""
    hidden = np.asarray(hidden, dtype=np.float32)
    if hidden.ndim != 3 or hidden.shape[:2] != mask.shape:
        raise PostprocessError(f"hidden states {hidden.shape} do not match mask {mask.shape}")
    rows = np.arange(hidden.shape[0])
    any_token = mask.any(axis=1)
    if pooling == "cls":
        pooled = hidden[rows, first_token_index(mask)]
    elif pooling == "last-token":
        pooled = hidden[rows, last_token_index(mask)]
    elif pooling == "mean":
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    elif pooling == "max":
        masked = np.where(mask[:, :, None], hidden, -np.inf)
        pooled = masked.max(axis=1) if hidden.shape[1] else np.zeros(hidden.shape[::2], np.float32)
    else:
        raise PostprocessError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    return np.where(any_token[:, None], pooled, 0.0).astype(np.float32)


def dense(hidden: np.ndarray, mask: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Pool, truncate to `dims` (Matryoshka), then normalize: truncation before normalization so
    that truncated vectors are unit length too."""
    vectors = pool(hidden, mask, config.get("pooling") or "cls")
    dims = config.get("dims")
    if dims:
        if dims > vectors.shape[1]:
            raise PostprocessError(f"dims {dims} exceeds the model's width {vectors.shape[1]}")
        vectors = vectors[:, :dims]
    if config.get("normalize", False):
        vectors = l2_normalize(vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embeddings(vectors: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """[B, D] vectors pooled in the graph -> truncated and normalized as `dense`."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise PostprocessError(f"embeddings must be [batch, dims], got {vectors.shape}")
    one_token = np.ones((vectors.shape[0], 1), dtype=bool)
    return dense(vectors[:, None, :], one_token, {**config, "pooling": "cls"})


# ------------------------------------------------------------------ scores


def scores(logits: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """[B, labels] -> [B, 1]: the first logit (num_labels=1 cross-encoders), optionally sigmoid."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise PostprocessError(f"reranker logits must be [batch, labels], got {logits.shape}")
    score = logits[:, :1]
    activation = config.get("score_activation", "none")
    if activation == "sigmoid":
        score = 1.0 / (1.0 + np.exp(-score))
    elif activation != "none":
        raise PostprocessError(f"unknown score_activation {activation!r}; use 'none' or 'sigmoid'")
    return np.ascontiguousarray(score, dtype=np.float32)


# ------------------------------------------------------------------ sparse


def _pad_ragged(
    rows: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (ids, weights) sorted by weight (descending) -> padded [B, n] arrays (n >= 1)."""
    width = max([len(ids) for ids, _ in rows] + [1])
    indices = np.full((len(rows), width), -1, dtype=np.int64)
    values = np.zeros((len(rows), width), dtype=np.float32)
    for i, (ids, weights) in enumerate(rows):
        order = np.lexsort((ids, -weights))  # heaviest first; ties by token id, deterministic
        indices[i, : len(ids)] = ids[order]
        values[i, : len(ids)] = weights[order]
    return indices, values


def sparse_from_vocab_weights(
    weights: np.ndarray, special_token_ids: Any = ()
) -> tuple[np.ndarray, np.ndarray]:
    """SPLADE: [B, vocab] weights -> the non-zero, non-special terms of each row."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2:
        raise PostprocessError(f"sparse weights must be [batch, vocab], got {weights.shape}")
    keep = weights > 0
    special = [i for i in special_token_ids if 0 <= i < weights.shape[1]]
    keep[:, special] = False
    rows = []
    for i in range(weights.shape[0]):
        ids = np.nonzero(keep[i])[0].astype(np.int64)
        rows.append((ids, weights[i, ids]))
    return _pad_ragged(rows)


def sparse_from_token_weights(
    token_weights: np.ndarray, input_ids: np.ndarray, mask: np.ndarray, special_token_ids: Any = ()
) -> tuple[np.ndarray, np.ndarray]:
    """bge-m3: one weight per token position -> max weight per token id, dropping special tokens,
    padding and zero weights."""
    token_weights = np.asarray(token_weights, dtype=np.float32)
    if token_weights.ndim == 3 and token_weights.shape[2] == 1:
        token_weights = token_weights[:, :, 0]
    if token_weights.shape != input_ids.shape:
        raise PostprocessError(
            f"token weights {token_weights.shape} do not match input_ids {input_ids.shape}"
        )
    special = np.asarray(list(special_token_ids), dtype=np.int64)
    rows = []
    for i in range(input_ids.shape[0]):
        valid = mask[i] & (token_weights[i] > 0) & ~np.isin(input_ids[i], special)
        ids, weights = input_ids[i][valid], token_weights[i][valid]
        unique = np.unique(ids)
        best = np.zeros(len(unique), dtype=np.float32)
        np.maximum.at(best, np.searchsorted(unique, ids), weights)
        rows.append((unique.astype(np.int64), best))
    return _pad_ragged(rows)


# ------------------------------------------------------------------ multi-vector (ColBERT)


def colbert_keep_mask(
    input_ids: np.ndarray, mask: np.ndarray, colbert: dict[str, Any]
) -> np.ndarray:
    """Which token positions become ColBERT vectors: attended tokens, plus a query's [MASK]
    augmentation tokens; minus skiplist ids (punctuation) in document rows."""
    keep = mask.copy()
    mask_token = colbert.get("mask_token_id")
    query_marker = colbert.get("query_marker_id")
    if mask_token is not None and query_marker is not None and input_ids.shape[1] > 1:
        is_query = input_ids[:, 1] == query_marker
        keep |= is_query[:, None] & (input_ids == mask_token)
    skiplist = colbert.get("skiplist_ids") or []
    document_marker = colbert.get("document_marker_id")
    if skiplist and document_marker is not None and input_ids.shape[1] > 1:
        is_document = input_ids[:, 1] == document_marker
        keep &= ~(is_document[:, None] & np.isin(input_ids, np.asarray(skiplist)))
    if colbert.get("skip_first_token"):
        keep[np.arange(len(keep)), first_token_index(mask)] = False
    return keep


def multi_vectors(vectors: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[B, T, D] + keep [B, T] -> normalized kept vectors packed to the front [B, n, D] (padded
    with zeros, n = most kept in the batch) and their counts [B, 1] int32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 3 or vectors.shape[:2] != keep.shape:
        raise PostprocessError(f"token vectors {vectors.shape} do not match keep mask {keep.shape}")
    counts = keep.sum(axis=1)
    width = max(int(counts.max(initial=0)), 1)
    out = np.zeros((vectors.shape[0], width, vectors.shape[2]), dtype=np.float32)
    normalized = l2_normalize(vectors)
    for i in range(vectors.shape[0]):
        rows = normalized[i][keep[i]]
        out[i, : len(rows)] = rows
    return out, counts.astype(np.int32).reshape(-1, 1)


# ------------------------------------------------------------------ entities (token classification)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, in float32, as transformers' token-classification pipeline."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def entities(logits: np.ndarray, inputs: dict[str, Any], config: dict[str, Any]) -> np.ndarray:
    """[B, T, labels] logits -> [B, 1] object array of UTF-8 JSON entity lists (one per text)."""
    missing = [n for n in STEP_INPUTS_BY_TASK["extract"] if n not in inputs]
    if missing:
        raise PostprocessError(f"extract needs inputs {missing}; got {sorted(inputs)}")
    texts = list(inputs[INPUT_TEXT])
    offsets = np.asarray(inputs[TOKEN_OFFSETS])
    words = np.asarray(inputs[WORD_IDS])
    logits = np.asarray(logits, dtype=np.float32)
    labels = list(config.get("labels") or [])
    if logits.ndim != 3 or logits.shape[2] != len(labels):
        raise PostprocessError(f"token logits {logits.shape} do not match {len(labels)} labels")
    if offsets.shape != (*logits.shape[:2], 2) or words.shape != logits.shape[:2]:
        raise PostprocessError(
            f"token offsets {offsets.shape} and word ids {words.shape} do not match the token "
            f"logits {logits.shape}"
        )
    if len(texts) != logits.shape[0]:
        raise PostprocessError(f"{len(texts)} texts for {logits.shape[0]} rows of token logits")
    aggregation = config.get("aggregation", "simple")
    if aggregation not in AGGREGATIONS:
        raise PostprocessError(f"unknown aggregation {aggregation!r}; use one of {AGGREGATIONS}")
    ignore = set(config.get("ignore_labels", ["O"]))
    probabilities = softmax(logits)
    out = np.empty((len(texts), 1), dtype=object)
    for row, text in enumerate(texts):
        tokens = np.nonzero(words[row] >= 0)[0]
        found = text_entities(
            text,
            probabilities[row, tokens],
            offsets[row, tokens],
            words[row, tokens],
            labels,
            aggregation,
        )
        kept = [e for e in found if e["label"] not in ignore]
        out[row, 0] = json.dumps(kept, ensure_ascii=False).encode("utf-8")
    return out


def token_predictions(
    probabilities: np.ndarray, words: np.ndarray, labels: list[str], aggregation: str
) -> list[tuple[str, float]]:
    """(label, score) per token; `first`/`max` give every token of a word the word's choice."""
    best = probabilities.argmax(axis=-1)
    chosen = [(labels[int(i)], float(probabilities[t, i])) for t, i in enumerate(best)]
    if aggregation == "simple":
        return chosen
    per_word: dict[int, tuple[str, float]] = {}
    for t, word in enumerate(words.tolist()):
        if word not in per_word:
            per_word[word] = chosen[t]  # first token of the word
        elif aggregation == "max" and chosen[t][1] > per_word[word][1]:
            per_word[word] = chosen[t]
    return [per_word[w] for w in words.tolist()]


def _tag(label: str) -> tuple[str, str]:
    """("B" | "I", entity type): a label without a B-/I- prefix continues ("I")."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def text_entities(
    text: str,
    probabilities: np.ndarray,
    offsets: np.ndarray,
    words: np.ndarray,
    labels: list[str],
    aggregation: str,
) -> list[dict[str, Any]]:
    """Entities of one text from its non-special tokens, grouped as transformers'
    `group_entities`: adjacent units (tokens, or words for first/max) of one entity type join
    unless the next starts with B-; score = the mean of the units' scores."""
    units = []  # (label, score, start, end) per token (simple) or per word (first, max)
    predictions = token_predictions(probabilities, words, labels, aggregation)
    for t, (label, score) in enumerate(predictions):
        start, end = int(offsets[t, 0]), int(offsets[t, 1])
        if aggregation != "simple" and units and words[t] == words[t - 1]:
            units[-1] = (units[-1][0], units[-1][1], units[-1][2], end)
            continue
        units.append((label, score, start, end))
    groups: list[list[tuple[str, float, int, int]]] = []
    for unit in units:
        bi, tag = _tag(unit[0])
        if groups and bi != "B" and tag == _tag(groups[-1][-1][0])[1]:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    found = []
    for group in groups:
        start, end = group[0][2], group[-1][3]
        found.append(
            {
                "label": group[0][0].split("-", 1)[-1],  # as transformers' group_sub_entities
                "score": float(np.mean(np.asarray([u[1] for u in group], dtype=np.float32))),
                "start": start,
                "end": end,
                "text": text[start:end],
            }
        )
    return found
