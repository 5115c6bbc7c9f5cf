"""shoal.postprocessing: pooling for both padding sides, Matryoshka, sparse and ColBERT outputs."""

from __future__ import annotations

import numpy as np
import pytest

import shoal.contract as contract
import shoal.postprocessing as pp
import shoal.span_extraction as spans
from shoal.postprocessing import PostprocessError, postprocess

RNG = np.random.default_rng(0)


def test_output_names_mirror_the_contract():
    for name in (
        "EMBEDDING",
        "SCORE",
        "SPARSE_INDICES",
        "SPARSE_VALUES",
        "COLBERT_VECTORS",
        "COLBERT_LENGTHS",
    ):
        assert getattr(pp, f"OUTPUT_{name}") == getattr(contract, f"OUTPUT_{name}")
    # extract-zero-shot (GLiNER) is decoded by shoal.span_extraction
    assert set(pp.GRAPH_OUTPUTS_BY_TASK) | {spans.TASK} == {t.value for t in contract.Task}
    assert contract.Task.EXTRACT_ZERO_SHOT == spans.TASK
    assert (spans.INPUT_LABELS, spans.INPUT_THRESHOLD, spans.OUTPUT_ENTITIES) == (
        contract.INPUT_LABELS,
        contract.INPUT_THRESHOLD,
        contract.OUTPUT_ENTITIES,
    )
    assert set(pp.POOLINGS) == {p.value for p in contract.Pooling}


def padded(lengths, width, left=False):
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for i, n in enumerate(lengths):
        if left:
            mask[i, width - n :] = 1
        else:
            mask[i, :n] = 1
    return mask


@pytest.mark.parametrize("left", [False, True])
def test_pooling_ignores_padding_on_either_side(left):
    hidden = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    mask = padded([5, 2], 5, left=left).astype(bool)
    real = [hidden[0], hidden[1, 3:] if left else hidden[1, :2]]
    expected = {
        "cls": [r[0] for r in real],
        "last-token": [r[-1] for r in real],
        "mean": [r.mean(axis=0) for r in real],
        "max": [r.max(axis=0) for r in real],
    }
    for pooling, rows in expected.items():
        np.testing.assert_allclose(
            pp.pool(hidden, mask, pooling), np.stack(rows), rtol=1e-6, err_msg=pooling
        )


def test_padding_values_do_not_leak_into_pooling():
    hidden = RNG.normal(size=(1, 4, 3)).astype(np.float32)
    mask = padded([2], 4).astype(bool)
    poisoned = hidden.copy()
    poisoned[0, 2:] = 1e6
    for pooling in pp.POOLINGS:
        np.testing.assert_allclose(pp.pool(hidden, mask, pooling), pp.pool(poisoned, mask, pooling))


def test_matryoshka_truncates_then_renormalizes():
    hidden = RNG.normal(size=(3, 4, 8)).astype(np.float32)
    mask = padded([4, 3, 1], 4)
    out = postprocess(
        "embed",
        {"hidden_states": hidden},
        np.ones((3, 4), np.int64),
        mask,
        {"pooling": "mean", "normalize": True, "dims": 5},
    )[contract.OUTPUT_EMBEDDING]
    assert out.shape == (3, 5) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    full = pp.pool(hidden, mask.astype(bool), "mean")[:, :5]
    np.testing.assert_allclose(out, full / np.linalg.norm(full, axis=1, keepdims=True), rtol=1e-5)
    with pytest.raises(PostprocessError, match="dims 9"):
        postprocess(
            "embed",
            {"hidden_states": hidden},
            np.ones((3, 4), np.int64),
            mask,
            {"pooling": "mean", "dims": 9},
        )


def test_scores_take_the_first_logit_with_optional_sigmoid():
    logits = np.array([[2.0], [-1.0]], dtype=np.float32)
    ids = np.ones((2, 3), np.int64)
    raw = postprocess("rerank", {"logits": logits}, ids, ids, {})[contract.OUTPUT_SCORE]
    assert raw.shape == (2, 1) and raw.tolist() == [[2.0], [-1.0]]
    sig = postprocess("rerank", {"logits": logits}, ids, ids, {"score_activation": "sigmoid"})
    np.testing.assert_allclose(sig[contract.OUTPUT_SCORE], 1 / (1 + np.exp(-logits)), rtol=1e-6)


def test_splade_extraction_drops_zero_and_special_terms_sorted_by_weight():
    weights = np.zeros((2, 10), dtype=np.float32)
    weights[0, [1, 4, 7]] = [0.5, 2.0, 1.0]  # 1 is special
    out = postprocess(
        "sparse",
        {"sparse_weights": weights},
        np.ones((2, 3), np.int64),
        np.ones((2, 3), np.int64),
        {"special_token_ids": [1]},
    )
    assert out[contract.OUTPUT_SPARSE_INDICES].tolist() == [[4, 7], [-1, -1]]
    assert out[contract.OUTPUT_SPARSE_VALUES].tolist() == [[2.0, 1.0], [0.0, 0.0]]
    assert out[contract.OUTPUT_SPARSE_INDICES].dtype == np.int64


def test_bge_m3_sparse_takes_the_max_weight_per_token_id():
    ids = np.array([[0, 7, 9, 7, 2, 1]], dtype=np.int64)  # <s> a b a </s> <pad>
    mask = np.array([[1, 1, 1, 1, 1, 0]], dtype=np.int64)
    weights = np.array([[5.0, 0.2, 0.0, 0.6, 3.0, 9.0]], dtype=np.float32)
    indices, values = pp.sparse_from_token_weights(weights, ids, mask.astype(bool), [0, 1, 2])
    assert indices.tolist() == [[7]]
    np.testing.assert_allclose(values, [[0.6]])


def test_colbert_vectors_are_masked_packed_and_normalized():
    q_marker, d_marker, mask_id, pad, dot = 5, 6, 4, 0, 9
    ids = np.array(
        [
            [2, q_marker, 11, 3, mask_id, mask_id],  # query: keeps the [MASK]s
            [2, d_marker, 11, dot, 3, pad],
        ],
        np.int64,
    )  # document: drops "." and padding
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], np.int64)
    vectors = RNG.normal(size=(2, 6, 3)).astype(np.float32)
    config = {
        "colbert": {
            "query_marker_id": q_marker,
            "document_marker_id": d_marker,
            "mask_token_id": mask_id,
            "skiplist_ids": [dot],
        }
    }
    out = postprocess("colbert", {"token_vectors": vectors}, ids, mask, config)
    lengths, packed = out[contract.OUTPUT_COLBERT_LENGTHS], out[contract.OUTPUT_COLBERT_VECTORS]
    assert lengths.dtype == np.int32 and lengths.tolist() == [[6], [4]]
    assert packed.shape == (2, 6, 3)
    kept = vectors[1, [0, 1, 2, 4]]
    np.testing.assert_allclose(
        packed[1, :4], kept / np.linalg.norm(kept, axis=1, keepdims=True), rtol=1e-5
    )
    assert not packed[1, 4:].any()


def test_multi_returns_every_output_of_the_contract():
    ids = np.array([[0, 7, 8, 2], [0, 7, 2, 1]], np.int64)
    mask = padded([4, 3], 4)
    graph = {
        "hidden_states": RNG.normal(size=(2, 4, 6)).astype(np.float32),
        "token_weights": np.abs(RNG.normal(size=(2, 4))).astype(np.float32),
        "colbert_vectors": RNG.normal(size=(2, 3, 6)).astype(np.float32),
    }
    out = postprocess(
        "multi",
        graph,
        ids,
        mask,
        {"pooling": "cls", "normalize": True, "special_token_ids": [0, 1, 2]},
    )
    assert set(out) == set(contract.OUTPUTS_BY_TASK[contract.Task.MULTI])
    assert out[contract.OUTPUT_COLBERT_LENGTHS].tolist() == [
        [3],
        [2],
    ]  # tokens after <s>, with </s>
    assert out[contract.OUTPUT_SPARSE_INDICES][1].tolist() == [7, -1]


def test_mismatched_inputs_name_what_is_wrong():
    with pytest.raises(PostprocessError, match="needs graph outputs"):
        postprocess("embed", {"logits": np.zeros((1, 1))}, np.ones((1, 2)), np.ones((1, 2)), {})
    with pytest.raises(PostprocessError, match="unknown task"):
        postprocess("summarize", {}, np.ones((1, 2)), np.ones((1, 2)), {})
    with pytest.raises(PostprocessError, match="unknown pooling"):
        postprocess(
            "embed",
            {"hidden_states": np.zeros((1, 2, 3))},
            np.ones((1, 2)),
            np.ones((1, 2)),
            {"pooling": "sum"},
        )
