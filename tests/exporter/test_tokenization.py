"""shoal.tokenization: settings from a checkpoint, padding sides, truncation, pairs, ColBERT."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from shoal.tokenization import TextEncoder, TokenizationError, tokenization_config


def encoder(folder, **kwargs) -> TextEncoder:
    return TextEncoder.from_file(folder / "tokenizer.json", tokenization_config(folder, **kwargs))


def test_right_padding_pads_to_longest_with_the_pad_id(tiny_model):
    folder = tiny_model("bert")
    enc = encoder(folder, token_type_ids=True)
    out = enc.encode(["the quick brown fox jumps", "fish", ""])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == out["token_type_ids"].dtype == np.int64
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    first = raw.encode("the quick brown fox jumps").ids
    assert ids.shape == (3, len(first))
    assert ids[0].tolist() == first
    assert mask[1].tolist() == [1] * len(raw.encode("fish").ids) + [0] * (
        len(first) - len(raw.encode("fish").ids)
    )
    assert (ids[mask == 0] == enc.config["pad_token_id"]).all()
    assert mask[2].sum() == 2  # [CLS] [SEP] for the empty string


def test_left_padding_puts_real_tokens_last(tiny_model):
    enc = encoder(tiny_model("qwen3"))
    assert enc.config["padding_side"] == "left"
    assert "token_type_ids" not in enc.encode(["x"])
    out = enc.encode(["a shoal of small fish", "fish"])
    assert out["attention_mask"][:, -1].tolist() == [1, 1]
    assert out["attention_mask"][1, 0] == 0


def test_long_texts_are_truncated_to_max_length_with_special_tokens_kept(tiny_model):
    folder = tiny_model("bert")
    enc = encoder(folder, max_length=8)
    out = enc.encode(["the quick brown fox jumps over the lazy dog " * 20])
    assert out["input_ids"].shape == (1, 8)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert out["input_ids"][0, -1] == raw.token_to_id("[SEP]")


def test_max_length_above_the_model_limit_is_an_error(tiny_model):
    with pytest.raises(TokenizationError, match="exceeds"):
        tokenization_config(tiny_model("bert"), max_length=100_000)


def test_prefixes_apply_by_text_type(tiny_model):
    folder = tiny_model("bert")
    enc = encoder(folder, query_prefix="query: ", document_prefix="passage: ")
    plain = encoder(folder)
    assert (
        enc.encode(["fish"], "query")["input_ids"].tolist()
        == plain.encode(["query: fish"])["input_ids"].tolist()
    )
    assert (
        enc.encode(["fish"])["input_ids"].tolist()
        == plain.encode(["passage: fish"])["input_ids"].tolist()
    )
    with pytest.raises(TokenizationError, match="text type"):
        enc.encode(["fish"], "passage")


def test_pairs_build_one_sequence_with_segment_ids(tiny_model):
    enc = encoder(tiny_model("reranker"), pairs=True, token_type_ids=True, max_length=16)
    out = enc.encode(["what is fish", "why"], pairs=["fish live in water", "long " * 40])
    assert out["input_ids"].shape[1] == 16
    assert out["token_type_ids"][0].max() == 1
    with pytest.raises(TokenizationError, match="pairs="):
        enc.encode(["what is fish"])
    with pytest.raises(TokenizationError, match="one each"):
        enc.encode(["a", "b"], pairs=["c"])


def test_colbert_markers_and_query_augmentation(tiny_model):
    folder = tiny_model("colbert")
    enc = encoder(folder, colbert_markers=("[unused0]", "[unused1]"), colbert_query_length=12)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    query = enc.encode(["fish"], "query")
    assert query["input_ids"].shape == (1, 12)
    assert query["input_ids"][0, 1] == raw.token_to_id("[unused0]")
    assert query["input_ids"][0, -1] == raw.token_to_id("[MASK]")
    assert query["attention_mask"][0].sum() == 4  # [CLS] [Q] fish [SEP]
    document = enc.encode(["fish live in water", "fish"])
    assert (document["input_ids"][:, 1] == raw.token_to_id("[unused1]")).all()
    assert (
        document["input_ids"][1][document["attention_mask"][1] == 0] == enc.config["pad_token_id"]
    ).all()


def test_missing_tokenizer_json_names_the_file(tmp_path):
    with pytest.raises(TokenizationError, match="tokenizer.json"):
        tokenization_config(tmp_path)
    with pytest.raises(TokenizationError, match="not found"):
        TextEncoder.from_file(
            tmp_path / "tokenizer.json",
            {"max_length": 8, "padding_side": "right", "pad_token_id": 0},
        )


def test_bad_settings_are_rejected():
    tok = Tokenizer.from_str(
        '{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}'
    )
    with pytest.raises(TokenizationError, match="lack"):
        TextEncoder(tok, {"max_length": 8})
    with pytest.raises(TokenizationError, match="padding_side"):
        TextEncoder(tok, {"max_length": 8, "padding_side": "middle", "pad_token_id": 0})


def test_pairs_put_the_query_prefix_on_queries_and_the_document_prefix_on_documents(tiny_model):
    folder = tiny_model("reranker")
    enc = encoder(folder, pairs=True, query_prefix="query: ", document_prefix="passage: ")
    plain = encoder(folder, pairs=True)
    got = enc.encode(["what is fish"], pairs=["fish live in water"])
    want = plain.encode(["query: what is fish"], pairs=["passage: fish live in water"])
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
