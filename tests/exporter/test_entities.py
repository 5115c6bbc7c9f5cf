"""shoal.postprocessing's entities (task extract) on hand-made logits, and the token offsets and
word ids shoal.tokenization gives the postprocess step. The pipeline comparison on real models is
in tests/model_repository/test_triton_extract.py and in every export's parity check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.postprocessing import PostprocessError, postprocess
from shoal.tokenization import word_span

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
CONFIDENT = 8.0


def one_hot_logits(labels: list[str], strong: list[bool] | None = None) -> np.ndarray:
    logits = np.zeros((1, len(labels), len(LABELS)), dtype=np.float32)
    for t, label in enumerate(labels):
        logits[0, t, LABELS.index(label)] = CONFIDENT if (strong or [True] * len(labels))[t] else 1
    return logits


def run(text, labels, spans, words, aggregation="simple", strong=None):
    """Entities of one text whose tokens (no specials) have these labels, spans and words."""
    outputs = postprocess(
        "extract",
        {"token_logits": one_hot_logits(labels, strong)},
        np.zeros((1, len(labels)), np.int64),
        np.ones((1, len(labels)), np.int64),
        {"labels": LABELS, "aggregation": aggregation, "ignore_labels": ["O"]},
        {
            "TEXT": [text],
            "token_offsets": np.asarray([spans], np.int64).reshape(1, -1, 2),
            "word_ids": np.asarray([words], np.int64),
        },
    )
    return json.loads(outputs["ENTITIES"][0, 0])


def test_adjacent_tokens_of_one_type_join_and_b_starts_a_new_entity():
    text = "Ada Lovelace met Bob in Paris"
    found = run(
        text,
        ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"],
        [(0, 3), (4, 12), (13, 16), (17, 20), (21, 23), (24, 29)],
        [0, 1, 2, 3, 4, 5],
    )
    assert [(e["label"], e["text"]) for e in found] == [
        ("PER", "Ada Lovelace"),
        ("PER", "Bob"),
        ("LOC", "Paris"),
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in found)
    assert 0.99 < found[0]["score"] <= 1.0


def test_two_b_labels_in_a_row_are_two_entities():
    found = run("Ann Bob", ["B-PER", "B-PER"], [(0, 3), (4, 7)], [0, 1])
    assert [e["text"] for e in found] == ["Ann", "Bob"]


def test_first_and_max_give_a_word_one_label():
    """ "Lovelace" = "Love" + "lace": first takes the first token's label, max the most
    confident one's; simple keeps the tokens' own labels."""
    text, spans, words = "Lovelace", [(0, 4), (4, 8)], [0, 0]
    labels, strong = ["B-PER", "B-LOC"], [False, True]
    simple = run(text, labels, spans, words, "simple", strong)
    assert [(e["label"], e["text"]) for e in simple] == [("PER", "Love"), ("LOC", "lace")]
    first = run(text, labels, spans, words, "first", strong)
    assert [(e["label"], e["text"]) for e in first] == [("PER", "Lovelace")]
    best = run(text, labels, spans, words, "max", strong)
    assert [(e["label"], e["text"]) for e in best] == [("LOC", "Lovelace")]


def test_offsets_are_characters_not_bytes():
    text = "東京 Ångström"
    found = run(text, ["B-LOC", "B-PER"], [(0, 2), (3, 11)], [0, 1])
    assert [e["text"] for e in found] == ["東京", "Ångström"]


def test_inconsistent_inputs_are_named():
    with pytest.raises(PostprocessError, match="extract needs inputs"):
        postprocess(
            "extract",
            {"token_logits": one_hot_logits(["O"])},
            np.zeros((1, 1), np.int64),
            np.ones((1, 1), np.int64),
            {"labels": LABELS},
            {},
        )
    with pytest.raises(PostprocessError, match="do not match 5 labels"):
        postprocess(
            "extract",
            {"token_logits": np.zeros((1, 1, 3), np.float32)},
            np.zeros((1, 1), np.int64),
            np.ones((1, 1), np.int64),
            {"labels": LABELS},
            {"TEXT": ["a"], "token_offsets": np.zeros((1, 1, 2)), "word_ids": np.zeros((1, 1))},
        )


@pytest.mark.parametrize(
    ("start", "end", "span"),
    [
        (4, 7, (4, 7)),  # no whitespace: unchanged
        (3, 9, (4, 9)),  # "▁Paris" spans " Paris": the space is dropped
        (3, 4, (4, 5)),  # a lone "▁" before a word: the word's first character
        (0, 0, (0, 0)),  # special tokens
    ],
)
def test_word_span_drops_the_whitespace_a_metaspace_token_carries(start, end, span):
    assert word_span("abc Paris", start, end) == span


def test_the_encoder_gives_offsets_and_word_ids_for_extract(tiny_model):
    from shoal.tokenization import TextEncoder, tokenization_config

    checkpoint = tiny_model("token-classification")
    config = tokenization_config(checkpoint, max_length=16, token_info=True)
    encoder = TextEncoder.from_file(checkpoint / "tokenizer.json", config)
    texts = ["unbelievable fish", ""]
    tokens = encoder.encode(texts)
    offsets, words = tokens["token_offsets"], tokens["word_ids"]
    assert offsets.shape == (*tokens["input_ids"].shape, 2)
    real = words[0] >= 0
    assert words[0, 0] == -1 and (words[1] == -1).all()  # [CLS], and the empty text
    spans = [texts[0][s:e] for s, e in offsets[0][real]]
    assert "".join(spans) == "unbelievablefish"
    assert words[0][real].tolist() == sorted(words[0][real].tolist())  # words in order
    assert words[0][real].max() == 1  # two words, however many pieces
