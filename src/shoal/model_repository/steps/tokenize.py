"""Triton python-backend model: the tokenize step of a shoal entry (BYTES texts -> int64 tokens).

shoal copies this file to `<model>__tokenize/1/model.py`, beside `tokenization.py` (the exporter's
standalone TextEncoder, the same code its parity check ran), `tokenizer/` and `step.json`. No shoal
imports: it runs inside Triton with numpy and `tokenizers` only.

Per request (one response each; a bad request gets an error response, the others are served).
A client's mistake (a RequestError) is answered as INVALID_ARG, which Triton sends as HTTP 400 /
gRPC INVALID_ARGUMENT; anything else is the server's fault (INTERNAL: 500).
- TEXT (and QUERY for rerankers) must be UTF-8: otherwise the error names the row and byte offset.
- A text over `max_text_bytes` is refused; a text over the model's max length in tokens is
  TRUNCATED to it (special tokens included), as the exported graph was verified with.
- Empty strings are allowed (they encode to the special tokens only); an empty batch is refused.
- TEXT_TYPE (optional, per row): "query" or "document" selects prefixes and ColBERT markers;
  rows without it are documents.
- extract-zero-shot (GLiNER): LABELS (a JSON list of labels per row, or one row for all) and
  THRESHOLD (optional, in [0, 1]) are checked here (span_extraction.py beside this file) and the
  prompt, words and spans built; a bad label list or threshold fails that request alone.
Token tensors are padded to the request's longest row (rounded up to `pad_to_multiple_of`, so that
more requests share a shape for the onnxruntime backend's batcher).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

STEP_CONFIG = "step.json"
TEXT, QUERY, TEXT_TYPE = "TEXT", "QUERY", "TEXT_TYPE"
DOCUMENT = "document"
TEXT_TYPES = ("query", "document")


TEXT_ADVICE = "split the text (it would be truncated to the model's max length anyway)"


class RequestError(ValueError):
    """What is wrong with one request, said so that the caller can fix it."""


def error_response(exc: Exception):
    """The response for a request that failed: INVALID_ARG for the client's mistakes (Triton
    answers 400 / INVALID_ARGUMENT, which clients and the router do not retry), INTERNAL else."""
    mistake = isinstance(exc, RequestError)
    code = pb_utils.TritonError.INVALID_ARG if mistake else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), code))


def decode_texts(
    name: str, values: np.ndarray, max_bytes: int, advice: str = TEXT_ADVICE
) -> list[str]:
    """A [batch, 1] BYTES tensor -> str per row; errors name the tensor, row and problem."""
    texts = []
    for row, value in enumerate(values.reshape(-1)):
        raw = value if isinstance(value, bytes) else str(value).encode()
        if len(raw) > max_bytes:
            raise RequestError(
                f"{name}[{row}] is {len(raw)} bytes, over the limit of {max_bytes} bytes per text; "
                + advice
            )
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"{name}[{row}] is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                f"{exc.start}); send texts as UTF-8 encoded bytes"
            ) from None
    return texts


# Padding value per tensor (others: 0). Token offsets and word ids mark padding with -1.
PAD_VALUES = {"token_offsets": -1, "word_ids": -1}


def pad_rows(parts: list[dict[str, np.ndarray]], width: int, left: bool, pad_id: int) -> dict:
    """Join encodings of different widths row-wise, padded to `width` on the padding side."""
    joined = {}
    for name in parts[0]:
        blocks = []
        for part in parts:
            array = part[name]
            missing = width - array.shape[1]
            fill = pad_id if name == "input_ids" else PAD_VALUES.get(name, 0)
            pad = np.full((array.shape[0], missing, *array.shape[2:]), fill, dtype=array.dtype)
            blocks.append(np.concatenate([pad, array] if left else [array, pad], axis=1))
        joined[name] = np.concatenate(blocks, axis=0)
    return joined


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from tokenization import TextEncoder  # beside this file in the version folder

        version_dir = Path(args["model_repository"]) / args["model_version"]
        settings = json.loads((version_dir / STEP_CONFIG).read_text())
        model_config = json.loads(args["model_config"])
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"]))
            for o in model_config["output"]
        ]
        self.max_bytes = int(settings["max_text_bytes"])
        self.spans = None
        if settings["task"] == "extract-zero-shot":
            from span_extraction import SpanPromptEncoder  # beside this file

            path = version_dir / settings["tokenizer_dir"] / "tokenizer.json"
            self.spans = SpanPromptEncoder.from_file(path, settings["tokenization"])
            return
        self.encoder = TextEncoder.from_file(
            version_dir / settings["tokenizer_dir"] / "tokenizer.json", settings["tokenization"]
        )
        self.pairs = bool(self.encoder.config["pairs"])
        self.left = self.encoder.config["padding_side"] == "left"
        self.pad_id = int(self.encoder.config["pad_token_id"])
        self.multiple = max(1, int(settings["pad_to_multiple_of"]))
        self.max_length = int(self.encoder.config["max_length"])
        produced = set(self.encoder.input_names)
        missing = [name for name, _ in self.outputs if name not in produced]
        if missing:
            raise ValueError(
                f"the tokenizer settings produce {sorted(produced)} but the config wants {missing}"
            )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._tokenize(request))
            except Exception as exc:  # noqa: BLE001  one bad request must not fail the others
                responses.append(error_response(exc))
        return responses

    def _read(self, request, name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _text_types(self, request, rows: int) -> list[str]:
        values = self._read(request, TEXT_TYPE)
        if values is None:
            return [DOCUMENT] * rows
        types = decode_texts(TEXT_TYPE, values, 64, f"use one of {TEXT_TYPES}")
        if len(types) != rows:
            raise RequestError(
                f"{TEXT_TYPE} has {len(types)} rows but {TEXT} has {rows}; give one per text"
            )
        for row, text_type in enumerate(types):
            if text_type not in TEXT_TYPES:
                raise RequestError(f"{TEXT_TYPE}[{row}] is {text_type!r}; use one of {TEXT_TYPES}")
        return types

    def _respond(self, tokens: dict[str, np.ndarray]):
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(tokens[name], dtype=dtype))
                for name, dtype in self.outputs
            ]
        )

    def _tokenize_spans(self, request):
        """extract-zero-shot: TEXT, LABELS, THRESHOLD -> prompt, words and span tensors."""
        import span_extraction as spans

        texts = decode_texts(TEXT, self._read(request, TEXT), self.max_bytes)
        if not texts:
            raise RequestError(f"{TEXT} has no rows: send a batch of at least one text")
        values = self._read(request, spans.INPUT_LABELS)
        label_rows = decode_texts(spans.INPUT_LABELS, values, self.max_bytes, "send fewer labels")
        config = self.spans.config
        try:
            labels = spans.parse_labels(label_rows, len(texts), int(config["max_labels"]))
            thresholds = spans.parse_thresholds(
                self._read(request, spans.INPUT_THRESHOLD),
                len(texts),
                float(config["default_threshold"]),
            )
            tokens = self.spans.encode(texts, labels)
        except spans.SpanRequestError as exc:
            raise RequestError(str(exc)) from None
        tokens[spans.THRESHOLDS] = thresholds
        return self._respond(tokens)

    def _tokenize(self, request):
        if self.spans is not None:
            return self._tokenize_spans(request)
        values = self._read(request, TEXT)
        texts = decode_texts(TEXT, values, self.max_bytes)
        if not texts:
            raise RequestError(f"{TEXT} has no rows: send a batch of at least one text")
        if self.pairs:
            queries = decode_texts(QUERY, self._read(request, QUERY), self.max_bytes)
            if len(queries) != len(texts):
                raise RequestError(
                    f"{QUERY} has {len(queries)} rows but {TEXT} has {len(texts)}: "
                    "give one query per document"
                )
            tokens = self.encoder.encode(queries, pairs=texts)
        else:
            tokens = self._encode_by_type(texts, self._text_types(request, len(texts)))
        width = tokens["input_ids"].shape[1]
        rounded = -(-width // self.multiple) * self.multiple
        if rounded != width and rounded <= max(self.max_length, width):
            tokens = pad_rows([tokens], rounded, self.left, self.pad_id)
        return self._respond(tokens)

    def _encode_by_type(self, texts: list[str], types: list[str]) -> dict[str, np.ndarray]:
        groups = {t: [i for i, x in enumerate(types) if x == t] for t in TEXT_TYPES}
        groups = {t: rows for t, rows in groups.items() if rows}
        if len(groups) == 1:
            (text_type,) = groups
            return self.encoder.encode(texts, text_type=text_type)
        # Mixed queries and documents: encode each kind, join, restore the request's row order.
        parts = [
            self.encoder.encode([texts[i] for i in rows], text_type=t) for t, rows in groups.items()
        ]
        width = max(p["input_ids"].shape[1] for p in parts)
        joined = pad_rows(parts, width, self.left, self.pad_id)
        order = np.argsort(np.concatenate([np.asarray(rows) for rows in groups.values()]))
        return {name: array[order] for name, array in joined.items()}
