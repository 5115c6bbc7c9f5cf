"""shoal.span_extraction (GLiNER's steps outside torch): request checks, word splitting, the span
tensors, and span decoding, the last against `gliner`'s own SpanDecoder on random logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.span_extraction import (
    GRAPH_SPAN_LOGITS,
    INPUT_LABELS,
    INPUT_TEXT,
    OUTPUT_ENTITIES,
    TASK,
    THRESHOLDS,
    WORD_OFFSETS,
    SpanDecodeError,
    SpanRequestError,
    decode_spans,
    parse_labels,
    parse_thresholds,
    postprocess,
    split_words,
)


def test_words_are_split_as_gliners_whitespace_splitter() -> None:
    text = "Jean-Luc met e_mail users in São Paulo, 2026! 東京"
    assert [w for w, _, _ in split_words(text, 100)] == [
        "Jean-Luc", "met", "e_mail", "users", "in", "São", "Paulo", ",", "2026", "!", "東京",
    ]  # fmt: skip
    assert all(text[s:e] == w for w, s, e in split_words(text, 100))
    assert len(split_words(text, 3)) == 3
    assert split_words("   ", 10) == []


def test_labels_are_json_lists_per_text_and_repeats_count_once() -> None:
    rows = [json.dumps(["person", "city", "person"]), '["date"]']
    assert parse_labels(rows, 2, 8) == [["person", "city"], ["date"]]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (['"person"'], r"LABELS\[0\] must be a JSON list of label strings"),
        (["[1, 2]"], r"LABELS\[0\] must be a JSON list of label strings"),
        (["[person"], r"LABELS\[0\] is not JSON"),
        (["[]"], r"LABELS\[0\] is an empty list"),
        (['["a", ""]'], r"LABELS\[0\] label 1 is empty"),
        ([json.dumps([f"l{i}" for i in range(5)])], r"5 labels, over this model's limit of 4"),
        ([json.dumps(["x" * 300])], r"300 characters"),
        (['["a"]', '["b"]'], r"LABELS has 2 rows for 1 texts"),
    ],
)
def test_bad_label_lists_are_refused_with_the_row_named(rows, message) -> None:
    with pytest.raises(SpanRequestError, match=message):
        parse_labels(rows, 1, 4)


def test_thresholds_default_per_row_and_must_be_scores() -> None:
    np.testing.assert_array_equal(parse_thresholds(None, 2, 0.5), [[0.5], [0.5]])
    np.testing.assert_array_equal(
        parse_thresholds(np.array([[0.2], [0.9]]), 2, 0.5), np.float32([[0.2], [0.9]])
    )
    for bad in (1.01, -0.5, float("nan"), float("inf")):
        with pytest.raises(SpanRequestError, match=r"THRESHOLD\[0\] is .*in \[0, 1\]"):
            parse_thresholds(np.array([[bad]]), 1, 0.5)
    with pytest.raises(SpanRequestError, match="THRESHOLD has 1 values for 2 texts"):
        parse_thresholds(np.array([[0.5]]), 2, 0.5)


def probabilities(words: int, width: int, labels: int, spans: dict) -> np.ndarray:
    out = np.zeros((words, width, labels), np.float32)
    for (start, span_width, label), score in spans.items():
        out[start, span_width, label] = score
    return out


def test_flat_decoding_keeps_the_best_of_overlapping_spans() -> None:
    # "New York City": (0..2) city 0.9 beats (1..1) person 0.8 and (0..1) city 0.7; (3) 0.6 stays
    p = probabilities(4, 3, 2, {(0, 2, 0): 0.9, (1, 0, 1): 0.8, (0, 1, 0): 0.7, (3, 0, 1): 0.6})
    assert decode_spans(p, 4, 2, 0.5) == [
        (0, 2, 0, pytest.approx(0.9)),
        (3, 3, 1, pytest.approx(0.6)),
    ]


def test_nested_decoding_keeps_spans_inside_others_but_not_crossing_ones() -> None:
    p = probabilities(4, 3, 1, {(0, 2, 0): 0.9, (1, 0, 0): 0.8, (1, 2, 0): 0.7})
    kept = decode_spans(p, 4, 1, 0.5, flat_ner=False)
    assert [(s, e) for s, e, _, _ in kept] == [(0, 2), (1, 1)]  # (1..3) crosses (0..2)


def test_the_threshold_is_strict_and_spans_stay_inside_the_text_and_labels() -> None:
    p = probabilities(3, 3, 3, {(0, 0, 0): 0.5, (1, 2, 0): 0.9, (2, 0, 2): 0.9, (1, 0, 1): 0.51})
    assert decode_spans(p, 3, 2, 0.5) == [(1, 1, 1, pytest.approx(0.51))]


def test_equal_scores_keep_gliners_candidate_order() -> None:
    p = probabilities(2, 2, 2, {(0, 1, 1): 0.8, (0, 0, 0): 0.8, (1, 0, 0): 0.8})
    assert decode_spans(p, 2, 2, 0.5) == [
        (0, 0, 0, pytest.approx(0.8)),
        (1, 1, 0, pytest.approx(0.8)),
    ]


def test_postprocess_maps_words_to_characters_per_text() -> None:
    texts = ["New York is big", ""]
    offsets = np.full((2, 4, 2), -1)
    offsets[0] = [(0, 3), (4, 8), (9, 11), (12, 15)]
    logits = np.full((2, 4, 2, 2), -10.0, np.float32)
    logits[0, 0, 1, 0] = 3.0  # "New York": city
    logits[1, 0, 0, 0] = 3.0  # the empty text's stand-in word: no entity
    out = postprocess(
        TASK,
        {GRAPH_SPAN_LOGITS: logits},
        None,
        None,
        {"flat_ner": True},
        {
            INPUT_TEXT: texts,
            INPUT_LABELS: ['["city", "person"]', '["city"]'],
            WORD_OFFSETS: offsets,
            THRESHOLDS: np.array([[0.5], [0.5]], np.float32),
        },
    )[OUTPUT_ENTITIES]
    first = json.loads(out[0, 0])
    assert [(e["label"], e["start"], e["end"], e["text"]) for e in first] == [
        ("city", 0, 8, "New York")
    ]
    assert first[0]["score"] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-6)
    assert json.loads(out[1, 0]) == []
    with pytest.raises(SpanDecodeError, match="do not match"):
        postprocess(
            TASK,
            {GRAPH_SPAN_LOGITS: logits[:1]},
            None,
            None,
            {},
            {INPUT_TEXT: texts, INPUT_LABELS: [], WORD_OFFSETS: offsets, THRESHOLDS: []},
        )


@pytest.mark.parametrize("flat_ner", [True, False])
def test_decoding_equals_gliners_span_decoder_on_random_logits(flat_ner: bool) -> None:
    pytest.importorskip("gliner")
    import torch
    from gliner.decoding.decoder import SpanDecoder

    rng = np.random.default_rng(7)
    words, width, labels = 9, 4, 3
    decoder = SpanDecoder(config=None)
    for _ in range(20):
        logits = rng.normal(0.0, 1.5, (1, words, width, labels)).astype(np.float32)
        threshold = float(rng.uniform(0.3, 0.8))
        want = decoder.decode(
            [["w"] * words],
            {i + 1: f"l{i}" for i in range(labels)},
            torch.from_numpy(logits),
            flat_ner=flat_ner,
            threshold=threshold,
        )[0]
        got = decode_spans(1 / (1 + np.exp(-logits[0])), words, labels, threshold, flat_ner)
        assert [(s, e, c) for s, e, c, _ in got] == [
            (w.start, w.end, int(w.entity_type[1:])) for w in want
        ]
        np.testing.assert_allclose([x[3] for x in got], [w.score for w in want], rtol=1e-6)


def test_a_label_with_the_prompt_markers_is_refused() -> None:
    from tokenizers import Tokenizer, models

    from shoal.span_extraction import SpanPromptEncoder

    config = {"max_length": 16, "pad_token_id": 0, "ent_token": "<<ENT>>", "sep_token": "<<SEP>>"}
    encoder = SpanPromptEncoder(
        Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        {**config, "max_width": 2, "max_words": 8},
    )
    with pytest.raises(
        SpanRequestError, match=r"LABELS\[0\] label 1 \('a <<SEP>>'\) contains the model's"
    ):
        encoder.encode(["fish"], [["city", "a <<SEP>>"]])


def word_level_encoder(max_length: int):
    from tokenizers import Tokenizer, models, processors

    from shoal.span_extraction import SpanPromptEncoder

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "<<ENT>>": 4, "<<SEP>>": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    config = {"max_length": max_length, "pad_token_id": 0, "ent_token": "<<ENT>>"}
    return SpanPromptEncoder(
        tokenizer, {**config, "sep_token": "<<SEP>>", "max_width": 2, "max_words": 50}
    )


def test_a_text_cut_at_max_length_keeps_the_words_that_fit_whole() -> None:
    # [CLS] <<ENT>> city <<SEP>> + words + [SEP]: 12 tokens leave 7 for words; the 7th may be
    # cut, so 6 words are kept and encoded again without truncation
    text = "a b c d e f g h i j"
    tokens = word_level_encoder(12).encode([text, "x"], [["city"], ["city"]])
    assert tokens["text_lengths"][:, 0].tolist() == [6, 1]
    assert tokens["word_offsets"][0, :, 1].tolist() == [1, 3, 5, 7, 9, 11]
    assert tokens["attention_mask"][0].sum() == 4 + 6 + 1
    assert tokens["span_mask"][0].sum() == 6 + 5  # width 1 and 2 spans inside 6 words
    np.testing.assert_array_equal(tokens["words_mask"][0, 4:10], [1, 2, 3, 4, 5, 6])


def test_a_prompt_that_fills_max_length_is_refused() -> None:
    with pytest.raises(SpanRequestError, match=r"LABELS\[1\]: the label prompt leaves no room"):
        word_level_encoder(8).encode(["a b", "a b"], [["x"], ["x", "y", "z"]])
