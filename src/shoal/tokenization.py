"""Texts -> the int64 tensors an exported encoder graph takes, from a tokenizer.json and a plain
dict of settings.

Used by the exporter (parity probes, verification) and copied verbatim into the tokenize step of
every Triton model-repository entry, so it imports only the standard library, numpy and
`tokenizers` (never `shoal`). The settings dict is stored in the manifest as
`extra["tokenization"]` and in the step's folder; `tokenization_config()` derives it from a Hugging
Face checkpoint.

Settings (all keys are written by `tokenization_config`):
    max_length       int. Longer inputs are TRUNCATED to this many tokens (special tokens
                     included), never rejected: embedders embed the start of long texts.
    padding_side     "right" | "left" (decoder embedders pad left so the last token is at T-1).
    pad_token_id     int.
    prefixes         {"query": str, "document": str}: prepended to each text by its text type
                     (pairs: the query prefix to queries, the document prefix to documents).
    pairs            bool. Cross-encoders: encode(queries, pairs=documents) builds one
                     "query [SEP] document" sequence per pair; truncation takes from the longer.
    token_type_ids   bool: whether the graph takes a token_type_ids input.
    colbert          null, or {"query_marker_id", "document_marker_id", "query_length",
                     "mask_token_id"}: ColBERT puts a marker token after [CLS] ([Q] or [D]) and
                     pads queries to query_length with [MASK] tokens (query augmentation; the
                     attention mask stays 0 there, as in colbert-ai). query_length null = no
                     augmentation.
    pad_to_max_length  bool: pad every text to max_length (SigLIP's text tower was trained on
                     texts padded to its full length and pools the last position)
    token_info       null, or {"unk_token_id", "continuing_subword_prefix",
                     "strip_whitespace"} (token
                     classification): encode() also returns, per token, `token_offsets` [B, T, 2]
                     (character start/end in the text) and `word_ids` [B, T] (the word each token
                     belongs to, as transformers' token-classification pipeline splits words),
                     both -1 at special tokens and padding. strip_whitespace: spans leave out
                     the whitespace a Metaspace token ("▁Paris") folds in (see `word_span`).
    prompt           null, or {"template", "prefix", "suffix", "prefix_ids", "suffix_ids"}
                     (LLM rerankers, with pairs): each (query, document) becomes the template
                     with "{query}" and "{document}" filled in, tokenized alone and truncated from its END to
                     max_length - len(prefix_ids) - len(suffix_ids) tokens, between the prefix
                     and suffix ids, which are never cut (Qwen3-Reranker's model card: the
                     document's end goes first; a query that fills the room leaves no document).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

TEXT_TYPES = ("query", "document")
# Tokenizer classes whose spans transformers reports without the leading whitespace of
# Metaspace tokens (what each export's parity check against the pipeline confirms).
STRIPPED_SPAN_TOKENIZERS = ("XLMRobertaTokenizer",)
TOKEN_OFFSETS = "token_offsets"
WORD_IDS = "word_ids"
PROMPT_FIELDS = ("query", "document")  # the placeholders of a prompt template: {query}, ...
_PROMPT_FIELD = re.compile(r"\{(query|document)\}")


class TokenizationError(ValueError):
    """Bad settings or bad input to the text encoder; the message says what to change."""


class TextEncoder:
    """Encodes batches of texts the way the exported graph was verified with."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any]) -> None:
        self.config = _validated(config)
        self.tokenizer = tokenizer
        # The tokenizer.json may carry its own padding/truncation settings: ours decide.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, config: dict[str, Any]) -> TextEncoder:
        path = Path(tokenizer_json)
        if not path.is_file():
            raise TokenizationError(f"tokenizer file {path} not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on parse errors
            raise TokenizationError(f"{path} is not a valid tokenizer.json: {exc}") from exc
        return cls(tokenizer, config)

    @property
    def input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask"]
        if self.config["token_type_ids"]:
            names.append("token_type_ids")
        if self.config["token_info"] is not None:
            names += [TOKEN_OFFSETS, WORD_IDS]
        return names

    def encode(
        self,
        texts: list[str],
        text_type: str = "document",
        pairs: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """int64 `input_ids`, `attention_mask` (+ `token_type_ids`), [batch, longest]."""
        config = self.config
        if text_type not in TEXT_TYPES:
            raise TokenizationError(f"text type {text_type!r} is not one of {TEXT_TYPES}")
        if not all(isinstance(t, str) for t in texts):
            raise TokenizationError("every text must be a str (decode UTF-8 bytes first)")
        if config["pairs"] != (pairs is not None):
            if config["pairs"]:
                raise TokenizationError("this model scores pairs: pass pairs= (one per text)")
            raise TokenizationError("this model encodes single texts: do not pass pairs=")
        if pairs is not None and len(pairs) != len(texts):
            raise TokenizationError(f"{len(texts)} texts but {len(pairs)} pairs: give one each")

        prefixes = config["prefixes"]
        prefix = prefixes.get(text_type, "")
        if pairs is not None:  # (query, document): each side gets its own prefix
            prefix = prefixes.get("query", "")
            pairs = [prefixes.get("document", "") + p for p in pairs]
        colbert = config["colbert"]
        if colbert is not None:
            # colbert-ai's trick: a one-token placeholder after [CLS], replaced by the marker id,
            # so that truncation already accounts for the marker.
            prefix = ". " + prefix
        texts = [prefix + t for t in texts]
        if config["prompt"] is not None:  # pairs were checked above
            return self._encode_prompts(texts, pairs)
        max_length = config["max_length"]
        fixed_length = None
        if colbert is not None and text_type == "query" and colbert["query_length"]:
            max_length = fixed_length = min(max_length, colbert["query_length"])
        if config["pad_to_max_length"]:
            fixed_length = max_length

        self.tokenizer.enable_truncation(max_length, strategy="longest_first")
        if pairs is None:
            encodings = self.tokenizer.encode_batch(texts)
        else:
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))

        ids = [e.ids for e in encodings]
        types = [e.type_ids for e in encodings]
        if colbert is not None:
            marker = colbert[f"{text_type}_marker_id"]
            for row in ids:
                if len(row) > 1:
                    row[1] = marker
        out = self._pad(ids, types, fixed_length)
        if config["token_info"] is not None:
            out.update(self._token_info(texts, encodings, out["input_ids"].shape[1]))
        return out

    def _encode_prompts(self, queries: list[str], documents: list[str]) -> dict[str, np.ndarray]:
        """LLM rerankers: prefix ids + the filled template (truncated from its end) + suffix ids,
        as one single-text sequence."""
        prompt = self.config["prompt"]
        prefix, suffix = prompt["prefix_ids"], prompt["suffix_ids"]
        room = self.config["max_length"] - len(prefix) - len(suffix)
        bodies = [
            fill_prompt(prompt["template"], query=q, document=d)
            for q, d in zip(queries, documents, strict=True)
        ]
        self.tokenizer.enable_truncation(room, strategy="longest_first")
        encodings = self.tokenizer.encode_batch(bodies)
        ids = [[*prefix, *e.ids, *suffix] for e in encodings]
        return self._pad(ids, [[0] * len(row) for row in ids], None)

    def _pad(
        self, ids: list[list[int]], types: list[list[int]], fixed_length: int | None
    ) -> dict[str, np.ndarray]:
        config = self.config
        batch = len(ids)
        width = fixed_length or max((len(row) for row in ids), default=0)
        pad_id = config["pad_token_id"]
        if fixed_length is not None and not config["pad_to_max_length"]:
            # ColBERT query augmentation: pad with [MASK], unattended
            pad_id = config["colbert"]["mask_token_id"]
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)
        attention_mask = np.zeros((batch, width), dtype=np.int64)
        token_type_ids = np.zeros((batch, width), dtype=np.int64)
        left = config["padding_side"] == "left"
        for i, (row, row_types) in enumerate(zip(ids, types, strict=True)):
            n = len(row)
            cols = slice(width - n, width) if left else slice(0, n)
            input_ids[i, cols] = row
            attention_mask[i, cols] = 1
            token_type_ids[i, cols] = row_types
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if config["token_type_ids"]:
            out["token_type_ids"] = token_type_ids
        return out

    def _token_info(self, texts: list[str], encodings: list[Any], width: int) -> dict:
        """Character offsets and word ids per token (right-aligned rows for left padding)."""
        batch = len(texts)
        offsets = np.full((batch, width, 2), -1, dtype=np.int64)
        words = np.full((batch, width), -1, dtype=np.int64)
        left = self.config["padding_side"] == "left"
        for i, (text, encoding) in enumerate(zip(texts, encodings, strict=True)):
            first = width - len(encoding.ids) if left else 0
            spans = encoding.offsets
            if self.config["token_info"].get("strip_whitespace"):
                spans = [word_span(text, start, end) for start, end in spans]
            for j, word in enumerate(self._word_ids(text, encoding, spans)):
                if word >= 0:
                    offsets[i, first + j] = spans[j]
                    words[i, first + j] = word
        return {TOKEN_OFFSETS: offsets, WORD_IDS: words}

    def _word_ids(self, text: str, encoding: Any, spans: list[tuple[int, int]]) -> list[int]:
        """The word of each token, -1 for special tokens. Words are split the way transformers'
        token-classification pipeline decides `is_subword` (so `first`/`max` aggregate the same
        tokens): with a continuing-subword prefix (WordPiece's "##"), a token whose text differs
        in length from its span continues a word; without one, a token not preceded by a space
        does; an unknown token always starts a word."""
        info = self.config["token_info"]
        prefix = info.get("continuing_subword_prefix")
        words, word = [], -1
        for token_id, special, (start, end) in zip(
            encoding.ids, encoding.special_tokens_mask, spans, strict=True
        ):
            if special:
                words.append(-1)
                continue
            if prefix:
                token = self.tokenizer.id_to_token(token_id) or ""
                is_subword = len(token) != end - start
            else:
                is_subword = start > 0 and " " not in text[start - 1 : start + 1]
            if token_id == info.get("unk_token_id"):
                is_subword = False
            if not is_subword or word < 0:
                word += 1
            words.append(word)
        return words


def word_span(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's character span without the whitespace a Metaspace tokenizer (XLM-R's "▁")
    folds into it: "▁Paris" spans "Paris", and a lone "▁" the first character of the word it
    precedes, as transformers (5) reports them for XLM-R, whose tokenizer it rebuilds to split on
    whitespace first (its DeBERTa-v2 tokenizer keeps the spaces: no stripping there)."""
    trimmed = start
    while trimmed < end and text[trimmed].isspace():
        trimmed += 1
    if trimmed == start or start == end:
        return start, end
    if trimmed == end:  # whitespace only: the word after it
        while trimmed < len(text) and text[trimmed].isspace():
            trimmed += 1
        return trimmed, min(trimmed + 1, len(text))
    return trimmed, end


def fill_prompt(template: str, **values: str) -> str:
    """`template` with each "{query}"/"{document}" replaced by its value; braces elsewhere (and
    in the values) stay as they are, unlike str.format."""
    return _PROMPT_FIELD.sub(lambda match: values[match.group(1)], template)


def _validated_prompt(prompt: Any, max_length: int, pairs: bool) -> None:
    if not isinstance(prompt, dict) or not {"template", "prefix_ids", "suffix_ids"} <= set(prompt):
        raise TokenizationError(
            f"prompt settings must hold template, prefix_ids and suffix_ids, got {prompt!r}"
        )
    if not pairs:
        raise TokenizationError("a prompt template scores pairs: set pairs=True with it")
    found = _PROMPT_FIELD.findall(prompt["template"])
    if sorted(found) != sorted(PROMPT_FIELDS):
        raise TokenizationError(
            f"the prompt template must hold {{query}} and {{document}} once each, found "
            f"{found or 'neither'} in {prompt['template']!r}"
        )
    fixed = len(prompt["prefix_ids"]) + len(prompt["suffix_ids"])
    if fixed >= max_length:
        raise TokenizationError(
            f"max_length {max_length} leaves no room for the query and document: the prompt's "
            f"prefix and suffix take {fixed} tokens; raise max_length above {fixed}"
        )


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    required = ("max_length", "padding_side", "pad_token_id")
    missing = [k for k in required if k not in config]
    if missing:
        raise TokenizationError(
            f"tokenization settings lack {missing}; build them with tokenization_config()"
        )
    out = {
        "prefixes": {},
        "pairs": False,
        "token_type_ids": False,
        "colbert": None,
        "token_info": None,
        "pad_to_max_length": False,
        "prompt": None,
        **config,
    }
    if not isinstance(out["max_length"], int) or out["max_length"] < 2:
        raise TokenizationError(f"max_length must be an int >= 2, got {out['max_length']!r}")
    if out["padding_side"] not in ("left", "right"):
        raise TokenizationError(
            f"padding_side must be 'left' or 'right', got {out['padding_side']!r}"
        )
    unknown_types = set(out["prefixes"]) - set(TEXT_TYPES)
    if unknown_types:
        raise TokenizationError(
            f"prefixes for unknown text types {sorted(unknown_types)}; use {TEXT_TYPES}"
        )
    colbert = out["colbert"]
    if colbert is not None:
        need = ("query_marker_id", "document_marker_id", "query_length", "mask_token_id")
        lacking = [k for k in need if k not in colbert]
        if lacking:
            raise TokenizationError(f"colbert settings lack {lacking}")
    if out["prompt"] is not None:
        _validated_prompt(out["prompt"], out["max_length"], out["pairs"])
    return out


# ------------------------------------------------------------------ settings from a checkpoint


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenizationError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """Special tokens are stored either as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def special_token(checkpoint: Path, role: str) -> str | None:
    """The text of a special token (`pad_token`, `mask_token`, ...) declared by the checkpoint."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        text = _token_text(_read_json(Path(checkpoint) / name).get(role))
        if text:
            return text
    return None


def token_id(tokenizer: Tokenizer, token: str, *, what: str, source: Path) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise TokenizationError(
            f"{what} {token!r} is not in the vocabulary of {source}/tokenizer.json"
        )
    return int(found)


def tokenization_config(
    checkpoint: str | Path,
    *,
    max_length: int | None = None,
    padding_side: str | None = None,
    token_type_ids: bool = False,
    pairs: bool = False,
    query_prefix: str = "",
    document_prefix: str = "",
    colbert_markers: tuple[str, str] | None = None,
    colbert_query_length: int | None = None,
    token_info: bool = False,
    pad_to_max_length: bool = False,
    prompt: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """The settings dict for `TextEncoder`, read from a Hugging Face checkpoint folder.

    max_length defaults to the tokenizer's model_max_length, capped by config.json's
    max_position_embeddings (minus RoBERTa's offset) and by 8192. colbert_markers = (query marker
    token, document marker token), e.g. ("[unused0]", "[unused1]"). prompt = (prefix, template,
    suffix) of an LLM reranker: the prefix and suffix are tokenized here, once, without the
    tokenizer's own special tokens (as Qwen3-Reranker's model card does)."""
    checkpoint = Path(checkpoint)
    tokenizer_json = checkpoint / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise TokenizationError(
            f"{tokenizer_json} not found: shoal needs a fast tokenizer (tokenizer.json); "
            "save one with AutoTokenizer.from_pretrained(...).save_pretrained(...)"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tok_config = _read_json(checkpoint / "tokenizer_config.json")
    model_config = _read_json(checkpoint / "config.json")

    limit = model_config.get("max_position_embeddings") or 8192
    if model_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(model_config.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    tokenizer_limit = tok_config.get("model_max_length")
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
        limit = tokenizer_limit
    limit = min(limit, 8192)
    if max_length is None:
        max_length = limit
    elif max_length > limit:
        raise TokenizationError(
            f"max_length {max_length} exceeds what {checkpoint} supports ({limit} tokens)"
        )

    pad = special_token(checkpoint, "pad_token")
    if pad is not None:
        pad_id = token_id(tokenizer, pad, what="pad token", source=checkpoint)
    elif model_config.get("pad_token_id") is not None:
        pad_id = int(model_config["pad_token_id"])
    else:
        raise TokenizationError(
            f"{checkpoint} declares no pad token (tokenizer_config.json pad_token or "
            "config.json pad_token_id); set one before exporting"
        )

    colbert = None
    if colbert_markers is not None:
        mask = special_token(checkpoint, "mask_token")
        if mask is None:
            raise TokenizationError(
                f"{checkpoint} declares no mask_token, needed by ColBERT queries"
            )
        query_marker, document_marker = colbert_markers
        colbert = {
            "query_marker_id": token_id(
                tokenizer, query_marker, what="query marker", source=checkpoint
            ),
            "document_marker_id": token_id(
                tokenizer, document_marker, what="document marker", source=checkpoint
            ),
            "query_length": colbert_query_length,
            "mask_token_id": token_id(tokenizer, mask, what="mask token", source=checkpoint),
        }

    info = None
    if token_info:
        unk = special_token(checkpoint, "unk_token")
        info = {
            "unk_token_id": tokenizer.token_to_id(unk) if unk else None,
            "continuing_subword_prefix": getattr(
                tokenizer.model, "continuing_subword_prefix", None
            ),
            "strip_whitespace": str(tok_config.get("tokenizer_class", "")).startswith(
                STRIPPED_SPAN_TOKENIZERS
            ),
        }

    prompt_settings = None
    if prompt is not None:
        prefix, template, suffix = prompt
        prompt_settings = {
            "template": template,
            "prefix": prefix,  # as text too: what parity's reference tokenizes on its own
            "suffix": suffix,
            "prefix_ids": tokenizer.encode(prefix, add_special_tokens=False).ids,
            "suffix_ids": tokenizer.encode(suffix, add_special_tokens=False).ids,
        }

    prefixes = {}
    if query_prefix:
        prefixes["query"] = query_prefix
    if document_prefix:
        prefixes["document"] = document_prefix
    config = {
        "max_length": int(max_length),
        "padding_side": padding_side or tok_config.get("padding_side") or "right",
        "pad_token_id": pad_id,
        "prefixes": prefixes,
        "pairs": pairs,
        "token_type_ids": token_type_ids,
        "colbert": colbert,
        "token_info": info,
        "pad_to_max_length": pad_to_max_length,
        "prompt": prompt_settings,
    }
    return _validated(config)
