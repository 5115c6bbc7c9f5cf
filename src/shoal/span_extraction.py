"""GLiNER zero-shot span extraction outside torch: what the `gliner` package does before and after
its model, for task `extract-zero-shot`.

Who uses it: the tokenize step (`SpanPromptEncoder`: words, the label prompt, token and span
tensors, and the request checks), the postprocess step (`postprocess`: span decoding into
entities), and the exporter's parity check, which runs this very code against `gliner`'s own
`predict_entities`. Standalone like shoal.tokenization (copied beside the python steps): numpy,
`tokenizers` and the standard library only.

What gliner (0.2.x, UniEncoderSpan models) does, and this module repeats:
- words: the regex `\\w+(?:[-_]\\w+)*|\\S` over the text (its "whitespace" splitter), at most
  `max_words` (config max_len) of them;
- prompt: `<<ENT>> label1 <<ENT>> label2 ... <<SEP>>` then the words, tokenized as pre-split words
  (special tokens added, truncated to the tokenizer's max length); duplicate labels count once;
- words_mask: the first sub-token of each text word gets the word's 1-based number (prompt words
  and other sub-tokens 0); text_lengths = number of words; span_idx = every (start, start + w) for
  w < max_width, span_mask = the span ends inside the text;
- decoding: sigmoid of the span logits, spans above the threshold, highest score first, a span
  overlapping one already kept is dropped (flat_ner; nested spans may stay when flat_ner is off);
  entities report character offsets of their first and last word.

Requests (per row of TEXT; Triton gives every input of a request one batch size): LABELS is one
JSON list of label strings per row; THRESHOLD (optional) one number in [0, 1] per row.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

TASK = "extract-zero-shot"
INPUT_TEXT = "TEXT"
INPUT_LABELS = "LABELS"
INPUT_THRESHOLD = "THRESHOLD"
OUTPUT_ENTITIES = "ENTITIES"
GRAPH_SPAN_LOGITS = "span_logits"  # FP32 [B, words, max_width, labels]
# The graph's inputs, in gliner's own order (its UniEncoderSpan ONNX export).
GRAPH_INPUTS = (
    "input_ids",
    "attention_mask",
    "words_mask",
    "text_lengths",
    "span_idx",
    "span_mask",
)
# What the tokenize step adds for the postprocess step.
WORD_OFFSETS = "word_offsets"  # INT64 [B, words, 2]: character start/end of each word, -1 pad
THRESHOLDS = "thresholds"  # FP32 [B, 1]: the request's threshold per row
# Inputs of the postprocess step besides ids, mask and the span logits.
STEP_INPUTS = (INPUT_TEXT, INPUT_LABELS, WORD_OFFSETS, THRESHOLDS)

WORD_PATTERN = re.compile(r"\w+(?:[-_]\w+)*|\S")
MAX_LABEL_CHARS = 256


class SpanRequestError(ValueError):
    """What is wrong with one request's TEXT, LABELS or THRESHOLD, said so the caller can fix it."""


class SpanDecodeError(ValueError):
    """The postprocess step's inputs do not fit together (an entry or step bug, not a request's)."""


# ------------------------------------------------------------------ requests


def split_words(text: str, max_words: int) -> list[tuple[str, int, int]]:
    """(word, start, end) as gliner's whitespace splitter, the first `max_words` of them."""
    words = []
    for match in WORD_PATTERN.finditer(text):
        if len(words) == max_words:
            break
        words.append((match.group(), match.start(), match.end()))
    return words


def parse_labels(values: list[str], rows: int, max_labels: int) -> list[list[str]]:
    """LABELS rows (JSON lists of strings) -> the label list of each of `rows` texts."""
    if len(values) != rows:
        raise SpanRequestError(
            f"{INPUT_LABELS} has {len(values)} rows for {rows} texts; send one JSON list of labels "
            "per text"
        )
    return [_label_list(row, value, max_labels) for row, value in enumerate(values)]


def _label_list(row: int, value: str, max_labels: int) -> list[str]:
    where = f"{INPUT_LABELS}[{row}]"
    example = '["person", "city"]'
    try:
        labels = json.loads(value)
    except json.JSONDecodeError as exc:
        raise SpanRequestError(
            f"{where} is not JSON ({exc.msg} at character {exc.pos}); send a JSON list of label "
            f"strings, e.g. {example}"
        ) from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise SpanRequestError(f"{where} must be a JSON list of label strings, e.g. {example}")
    if not labels:
        raise SpanRequestError(f"{where} is an empty list: name at least one label to extract")
    for i, label in enumerate(labels):
        if not label.strip():
            raise SpanRequestError(f"{where} label {i} is empty; every label must name something")
        if len(label) > MAX_LABEL_CHARS:
            raise SpanRequestError(
                f"{where} label {i} has {len(label)} characters, over {MAX_LABEL_CHARS}; "
                "use a short label (a few words)"
            )
    unique = list(dict.fromkeys(labels))  # gliner counts a repeated label once
    if len(unique) > max_labels:
        raise SpanRequestError(
            f"{where} has {len(unique)} labels, over this model's limit of {max_labels}; "
            "split them over several requests"
        )
    return unique


def parse_thresholds(values: np.ndarray | None, rows: int, default: float) -> np.ndarray:
    """THRESHOLD rows -> FP32 [rows, 1]; absent: the export's default for every row."""
    if values is None:
        return np.full((rows, 1), default, dtype=np.float32)
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(flat) != rows:
        raise SpanRequestError(
            f"{INPUT_THRESHOLD} has {len(flat)} values for {rows} texts; send one per text"
        )
    for i, value in enumerate(flat):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise SpanRequestError(
                f"{INPUT_THRESHOLD}[{i}] is {value}; a threshold is a score in [0, 1] (entities "
                "scoring above it are returned)"
            )
    return flat.astype(np.float32).reshape(rows, 1)


# ------------------------------------------------------------------ tokenize side


class SpanPromptEncoder:
    """Texts and labels -> the graph's inputs plus each word's character offsets.

    Settings (`config`, the manifest's extra["tokenization"] for this task): max_length (tokens,
    truncation), pad_token_id, ent_token, sep_token, max_width, max_words, max_labels,
    default_threshold, subtoken_pooling ("first" | "last" | "mean" | "max"), padding_side."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any]) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(config["max_length"]))
        self.max_width = int(config["max_width"])
        self.max_words = int(config["max_words"])

    @classmethod
    def from_file(cls, path: str | Path, config: dict[str, Any]) -> SpanPromptEncoder:
        return cls(Tokenizer.from_file(str(path)), config)

    def prompt(self, labels: list[str], row: int = 0) -> list[str]:
        markers = (self.config["ent_token"], self.config["sep_token"])
        words = []
        for i, label in enumerate(labels):
            if any(marker in label for marker in markers):
                raise SpanRequestError(
                    f"{INPUT_LABELS}[{row}] label {i} ({label!r}) contains the model's prompt marker "
                    f"{' or '.join(markers)}; leave the markers out of labels"
                )
            words += [self.config["ent_token"], label]
        return [*words, self.config["sep_token"]]

    def encode(self, texts: list[str], labels: list[list[str]]) -> dict[str, np.ndarray]:
        rows = []
        for row, (text, row_labels) in enumerate(zip(texts, labels, strict=True)):
            words = split_words(text, self.max_words)
            # gliner never runs a text without words; a stand-in word keeps the batch's shapes
            # and yields no entities (its offsets stay -1)
            pieces = [w for w, _, _ in words] or [self.config["sep_token"]]
            prompt = self.prompt(row_labels, row)
            encoding = self.tokenizer.encode([*prompt, *pieces], is_pretokenized=True)
            if encoding.overflowing:  # cut at max_length: keep the words that fit whole
                pieces = pieces[: self.words_that_fit(encoding, len(prompt), row)]
                encoding = self.tokenizer.encode([*prompt, *pieces], is_pretokenized=True)
            offsets = [(s, e) for _, s, e in words[: len(pieces)]]
            rows.append((encoding, len(prompt), offsets, len(pieces)))
        return self._batch(rows)

    def words_that_fit(self, encoding: Any, prompt_words: int, row: int) -> int:
        """The words before the last one the truncated `encoding` reached (that one may be cut).
        The entry encodes the prompt with just those, as gliner does a text ending there: gliner
        itself would score spans over words past the cut from no tokens at all; shoal leaves
        them out, as every task leaves out what lies past max_length."""
        seen = [w for w in encoding.word_ids if w is not None and w >= prompt_words]
        fit = max(seen) - prompt_words if seen else 0
        if fit < 1:
            raise SpanRequestError(
                f"{INPUT_LABELS}[{row}]: the label prompt leaves no room for the text in the "
                f"model's max length ({self.config['max_length']} tokens); send fewer or shorter "
                "labels"
            )
        return fit

    def _batch(self, rows: list[tuple[Any, int, list[tuple[int, int]], int]]) -> dict:
        batch = len(rows)
        width = max(len(r[0].ids) for r in rows)
        words = max(r[3] for r in rows)
        spans = words * self.max_width
        out = {
            "input_ids": np.full((batch, width), int(self.config["pad_token_id"]), np.int64),
            "attention_mask": np.zeros((batch, width), np.int64),
            "words_mask": np.zeros((batch, width), np.int64),
            "text_lengths": np.zeros((batch, 1), np.int64),
            "span_idx": np.zeros((batch, spans, 2), np.int64),
            "span_mask": np.zeros((batch, spans), np.bool_),
            WORD_OFFSETS: np.full((batch, words, 2), -1, np.int64),
        }
        for i, (encoding, prompt_words, offsets, count) in enumerate(rows):
            length = len(encoding.ids)
            out["input_ids"][i, :length] = encoding.ids
            out["attention_mask"][i, :length] = encoding.attention_mask
            out["words_mask"][i, :length] = self.words_mask(encoding.word_ids, prompt_words)
            out["text_lengths"][i, 0] = count
            starts = np.repeat(np.arange(count), self.max_width)
            ends = starts + np.tile(np.arange(self.max_width), count)
            out["span_idx"][i, : len(starts)] = np.stack([starts, ends], axis=1)
            out["span_mask"][i, : len(starts)] = ends <= count - 1
            if offsets:
                out[WORD_OFFSETS][i, : len(offsets)] = offsets
        return out

    def words_mask(self, word_ids: list[int | None], skip: int) -> list[int]:
        """gliner's prepare_word_mask: words are counted as they appear (a word that yields no
        token is not counted); the prompt's `skip` words and unselected sub-tokens get 0."""
        pooling = self.config.get("subtoken_pooling", "first")
        mask, seen, previous = [], 0, None
        for t, word in enumerate(word_ids):
            if word is None:
                mask.append(0)
                previous = word
                continue
            first = word != previous
            seen += first
            last = t + 1 == len(word_ids) or word_ids[t + 1] != word
            selected = pooling in ("mean", "max") or (first if pooling == "first" else last)
            mask.append(seen - skip if seen > skip and selected else 0)
            previous = word
        return mask


# ------------------------------------------------------------------ postprocess side


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def overlaps(a: tuple[int, int], b: tuple[int, int], flat_ner: bool) -> bool:
    """gliner's has_overlapping (flat) / has_overlapping_nested (nested allowed); the same span
    twice always overlaps (one label per span)."""
    if a == b:
        return True
    disjoint = a[0] > b[1] or b[0] > a[1]
    if flat_ner:
        return not disjoint
    nested = (a[0] <= b[0] and a[1] >= b[1]) or (b[0] <= a[0] and b[1] >= a[1])
    return not (disjoint or nested)


def decode_spans(
    probabilities: np.ndarray, words: int, labels: int, threshold: float, flat_ner: bool = True
) -> list[tuple[int, int, int, float]]:
    """[W, K, C] span probabilities of one text -> kept (start word, end word, label, score),
    by start. Candidates are taken in gliner's order (start, width, label), then kept greedily
    from the highest score (a stable sort: ties keep that order)."""
    probabilities = probabilities[:words, :, :labels]
    starts, widths, classes = np.nonzero(probabilities > threshold)
    candidates = [
        (int(s), int(s + k), int(c), float(probabilities[s, k, c]))
        for s, k, c in zip(starts, widths, classes, strict=True)
        if s + k + 1 <= words
    ]
    kept: list[tuple[int, int, int, float]] = []
    for span in sorted(candidates, key=lambda x: -x[3]):
        if not any(overlaps(span[:2], other[:2], flat_ner) for other in kept):
            kept.append(span)
    return sorted(kept, key=lambda x: x[0])


def text_entities(
    text: str,
    probabilities: np.ndarray,
    offsets: np.ndarray,
    labels: list[str],
    threshold: float,
    flat_ner: bool = True,
) -> list[dict[str, Any]]:
    """Entities of one text: label, score and character offsets of its words (`offsets`: the
    [W, 2] word offsets, -1 past the text's words)."""
    words = int((offsets[:, 0] >= 0).sum())
    found = []
    for first, last, label, score in decode_spans(
        probabilities, words, len(labels), threshold, flat_ner
    ):
        start, end = int(offsets[first, 0]), int(offsets[last, 1])
        found.append(
            {
                "label": labels[label],
                "score": score,
                "start": start,
                "end": end,
                "text": text[start:end],
            }
        )
    return found


def postprocess(
    task: str,
    graph_outputs: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    config: dict[str, Any],
    inputs: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """shoal.postprocessing.postprocess's signature, for task extract-zero-shot: ENTITIES
    [B, 1], a UTF-8 JSON list per text. `inputs`: TEXT and LABELS as lists of str, the word
    offsets and thresholds from the tokenize step."""
    if task != TASK:
        raise SpanDecodeError(f"span extraction serves task {TASK!r}, not {task!r}")
    inputs = inputs or {}
    missing = [n for n in STEP_INPUTS if n not in inputs]
    if missing or GRAPH_SPAN_LOGITS not in graph_outputs:
        raise SpanDecodeError(f"{TASK} needs {GRAPH_SPAN_LOGITS} and {list(STEP_INPUTS)}")
    logits = np.asarray(graph_outputs[GRAPH_SPAN_LOGITS], dtype=np.float32)
    texts = list(inputs[INPUT_TEXT])
    offsets = np.asarray(inputs[WORD_OFFSETS])
    thresholds = np.asarray(inputs[THRESHOLDS], dtype=np.float32).reshape(-1)
    if logits.ndim != 4 or logits.shape[0] != len(texts) or offsets.shape[:2] != logits.shape[:2]:
        raise SpanDecodeError(
            f"span logits {logits.shape}, word offsets {offsets.shape} and {len(texts)} texts "
            "do not match"
        )
    labels = parse_labels(list(inputs[INPUT_LABELS]), len(texts), 1 << 30)
    probabilities = sigmoid(logits)
    flat_ner = bool(config.get("flat_ner", True))
    out = np.empty((len(texts), 1), dtype=object)
    for row, text in enumerate(texts):
        found = text_entities(
            text, probabilities[row], offsets[row], labels[row], float(thresholds[row]), flat_ner
        )
        out[row, 0] = json.dumps(found, ensure_ascii=False).encode("utf-8")
    return {OUTPUT_ENTITIES: out}
