"""Parity verification: the exported path (shoal.tokenization -> ONNX on onnxruntime ->
shoal.postprocessing, on padded batches) against the PyTorch reference (the Hugging Face tokenizer
and model, one unpadded text at a time, pooled by shoal.exporter.reference).

Who calls it: export_model (every export; a failure aborts it) and verify_entry (`shoal verify`).

Probe set: batch 1, and one padded batch of varied lengths with unicode, an empty string and a
text longer than max_length (truncated on both sides). Query-side probes run too where queries
differ (prefixes, ColBERT markers); rerankers get (query, document) pairs.

Metrics (the manifest's ParityResult): "min_cosine" for dense and ColBERT vectors and token
classifiers' logits (the lowest cosine over every probe text / token vector), "max_scaled_diff"
for scores and sparse weights (largest |onnx - reference| divided by max(1, largest |reference|)
of that text) and for entities (the largest score difference; 1.0, failing at every dtype, when
the entities' labels or character spans differ from transformers' pipeline). Rerankers also get
"discordant_pairs" on SCORE (pairs of a probe batch ranked otherwise than the reference; must be 0).
A family may tighten the score bar (`Adapter.parity_score_limits`: LLM rerankers, 1e-5 at fp32).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from shoal.contract import (
    OUTPUT_COLBERT_LENGTHS,
    OUTPUT_COLBERT_VECTORS,
    OUTPUT_EMBEDDING,
    OUTPUT_ENTITIES,
    OUTPUT_SCORE,
    OUTPUT_SPARSE_INDICES,
    OUTPUT_SPARSE_VALUES,
    Dtype,
    Task,
)
from shoal.exporter.errors import ParityError
from shoal.exporter.options import ExportPlan
from shoal.manifest import ParityResult
from shoal.postprocessing import GRAPH_TOKEN_LOGITS, INPUT_TEXT, STEP_INPUTS_BY_TASK, postprocess
from shoal.tokenization import TextEncoder

log = logging.getLogger(__name__)

MIN_COSINE = "min_cosine"
MAX_SCALED_DIFF = "max_scaled_diff"
# Rerankers: pairs of one probe batch that the export orders otherwise than the reference, among
# those whose reference scores differ by more than the dtype's score tolerance (closer ones are
# ties at that precision). Must be 0.
DISCORDANT_PAIRS = "discordant_pairs"


@dataclass(frozen=True)
class Threshold:
    min_cosine: float
    max_scaled_diff: float


# fp32 is the bar; fp16 halves the mantissa (~1e-3 relative); int8 dynamic quantization
# of activations and weights loses more (cosine >= 0.99 is the usual bar for int8 embedders).
THRESHOLDS: dict[str, Threshold] = {
    Dtype.FP32.value: Threshold(min_cosine=0.99999, max_scaled_diff=1e-4),
    Dtype.FP16.value: Threshold(min_cosine=0.999, max_scaled_diff=1e-2),
    Dtype.INT8.value: Threshold(min_cosine=0.99, max_scaled_diff=0.1),
}

PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "fish",
    "",
    "Café naïve résumé, 東京は日本の首都です 🐟🚀 Москва",
    "What is the capital of France? Paris is the capital of France.",
)
PROBE_QUERIES: tuple[str, ...] = ("where do fish live?", "capital of France", "", "東京 🐟")
LONG_SENTENCE = "Sparse encoders weigh the words of the vocabulary that matter. "


def long_text(max_length: int) -> str:
    """Longer than max_length tokens for any tokenizer (every word is at least one token)."""
    return LONG_SENTENCE * (max_length // 4 + 2)


@dataclass
class ProbeRun:
    """One batch the exported path runs, and what the reference compares it with."""

    label: str
    texts: list[str]
    text_type: str = "document"
    pairs: list[str] | None = None


def probe_runs(plan: ExportPlan) -> list[ProbeRun]:
    documents = [*PROBE_TEXTS, long_text(plan.max_length)]
    if plan.task == Task.RERANK:
        queries = [PROBE_QUERIES[i % len(PROBE_QUERIES)] for i in range(len(documents))]
        queries[-1] = long_text(plan.max_length)  # both sides longer than max_length together
        return [
            ProbeRun("batch1", queries[:1], pairs=documents[:1]),
            ProbeRun("padded", queries, pairs=documents),
        ]
    runs = [ProbeRun("batch1", documents[:1]), ProbeRun("padded", documents)]
    if "query" in plan.prefixes or plan.tokenization.get("colbert"):
        runs.append(ProbeRun("queries", [*PROBE_QUERIES, long_text(plan.max_length)], "query"))
    return runs


# ------------------------------------------------------------------ the exported path


def onnx_session(onnx_path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def exported_outputs(
    session: Any, encoder: TextEncoder, plan: ExportPlan, run: ProbeRun
) -> dict[str, np.ndarray]:
    tokens = encoder.encode(run.texts, run.text_type, run.pairs)
    feed = {i.name: tokens[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    graph = {
        name: value.astype(np.float32)
        for name, value in zip(names, session.run(names, feed), strict=True)
    }
    inputs = {n: tokens[n] for n in STEP_INPUTS_BY_TASK.get(plan.task.value, ()) if n in tokens}
    inputs[INPUT_TEXT] = run.texts
    outputs = postprocess(
        plan.task.value,
        graph,
        tokens["input_ids"],
        tokens["attention_mask"],
        plan.postprocessing,
        inputs,
    )
    if GRAPH_TOKEN_LOGITS in graph:  # compared token by token: only each text's own tokens
        mask = tokens["attention_mask"].astype(bool)
        outputs[GRAPH_TOKEN_LOGITS] = [
            row[keep] for row, keep in zip(graph[GRAPH_TOKEN_LOGITS], mask, strict=True)
        ]
    return outputs


# ------------------------------------------------------------------ the reference path


def reference_encoding(
    hf_tokenizer: Any, plan: ExportPlan, text: str, text_type: str, pair: str | None
) -> dict[str, Any]:
    """One text tokenized by the Hugging Face tokenizer (not shoal.tokenization), unpadded except
    for ColBERT's query augmentation."""
    import torch

    if pair is None:
        text = plan.prefixes.get(text_type, "") + text
    else:  # (query, document): each side gets its own prefix
        text = plan.prefixes.get("query", "") + text
        pair = plan.prefixes.get("document", "") + pair
    colbert = plan.tokenization.get("colbert")
    max_length = plan.max_length
    if colbert is not None:
        text = ". " + text  # colbert-ai's placeholder for the marker
        if text_type == "query" and colbert["query_length"]:
            max_length = min(max_length, colbert["query_length"])
    # Batch form, as sentence-transformers' CrossEncoder calls it: an empty second text is still
    # a pair ([CLS] q [SEP] [SEP]), where the single-text form would drop it.
    encoded = hf_tokenizer(
        [text],
        [pair] if pair is not None else None,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=True,
    )
    encoded = {key: values[0] for key, values in encoded.items()}
    ids = list(encoded["input_ids"])
    mask = [1] * len(ids)
    types = list(encoded.get("token_type_ids") or [0] * len(ids))
    if colbert is not None:
        ids[1] = colbert[f"{text_type}_marker_id"]
        if text_type == "query" and colbert["query_length"]:
            extra = max_length - len(ids)
            ids += [colbert["mask_token_id"]] * extra
            mask += [0] * extra
            types += [0] * extra
    as_tensor = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
    return {
        "input_ids": as_tensor(ids),
        "attention_mask": as_tensor(mask),
        "token_type_ids": as_tensor(types),
    }


def reference_outputs(
    adapter: Any, model: Any, hf_tokenizer: Any, plan: ExportPlan, run: ProbeRun
) -> list[dict[str, Any]]:
    import torch

    pairs = run.pairs or [None] * len(run.texts)
    with torch.inference_mode():
        wants = [
            adapter.reference(
                model,
                plan,
                adapter.reference_encoding(hf_tokenizer, plan, text, run.text_type, pair),
            )
            for text, pair in zip(run.texts, pairs, strict=True)
        ]
        whole = adapter.reference_texts(model, hf_tokenizer, plan, run.texts)
    for want, extra in zip(wants, whole or [], strict=False):
        want.update(extra)
    return wants


# ------------------------------------------------------------------ comparison


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def _scaled_diff(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return float(np.abs(got - want).max(initial=0.0) / scale)


def _sparse_row(indices: np.ndarray, values: np.ndarray) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(indices, values, strict=True) if i >= 0}


def compare_text(
    task: Task, got: dict[str, np.ndarray], row: int, want: dict[str, Any]
) -> dict[str, tuple[str, float]]:
    """(metric, value) per contract output for one text."""
    figures: dict[str, tuple[str, float]] = {}
    if OUTPUT_EMBEDDING in want:
        figures[OUTPUT_EMBEDDING] = (
            MIN_COSINE,
            _cosine(got[OUTPUT_EMBEDDING][row], want[OUTPUT_EMBEDDING]),
        )
    if OUTPUT_SCORE in want:
        figures[OUTPUT_SCORE] = (
            MAX_SCALED_DIFF,
            _scaled_diff(got[OUTPUT_SCORE][row], want[OUTPUT_SCORE]),
        )
    if OUTPUT_SPARSE_VALUES in want:
        terms = _sparse_row(got[OUTPUT_SPARSE_INDICES][row], got[OUTPUT_SPARSE_VALUES][row])
        reference_terms = want[OUTPUT_SPARSE_VALUES]
        keys = sorted(set(terms) | set(reference_terms))
        figures[OUTPUT_SPARSE_VALUES] = (
            MAX_SCALED_DIFF,
            _scaled_diff(
                [terms.get(k, 0.0) for k in keys], [reference_terms.get(k, 0.0) for k in keys]
            ),
        )
    if OUTPUT_COLBERT_VECTORS in want:
        expected = want[OUTPUT_COLBERT_VECTORS]
        length = int(got[OUTPUT_COLBERT_LENGTHS][row, 0])
        if length != len(expected):
            value = -1.0  # a different number of token vectors can never pass
            log.warning("ColBERT row %d: %d vectors, reference has %d", row, length, len(expected))
        else:
            vectors = got[OUTPUT_COLBERT_VECTORS][row, :length]
            value = min(
                (_cosine(a, b) for a, b in zip(vectors, expected, strict=True)), default=1.0
            )
        figures[OUTPUT_COLBERT_VECTORS] = (MIN_COSINE, value)
    if GRAPH_TOKEN_LOGITS in want:
        figures[GRAPH_TOKEN_LOGITS] = (
            MIN_COSINE,
            min(
                (
                    _cosine(a, b)
                    for a, b in zip(
                        got[GRAPH_TOKEN_LOGITS][row], want[GRAPH_TOKEN_LOGITS], strict=False
                    )
                ),
                default=1.0,
            )
            if len(got[GRAPH_TOKEN_LOGITS][row]) == len(want[GRAPH_TOKEN_LOGITS])
            else -1.0,
        )
    if OUTPUT_ENTITIES in want:
        figures[OUTPUT_ENTITIES] = (
            MAX_SCALED_DIFF,
            entity_difference(json.loads(got[OUTPUT_ENTITIES][row, 0]), want[OUTPUT_ENTITIES]),
        )
    return figures


def entity_difference(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> float:
    """The largest score difference of two entity lists; 1.0 (fails at every dtype) when their
    labels or character spans differ."""
    spans = lambda entities: [(e["label"], e["start"], e["end"]) for e in entities]  # noqa: E731
    if spans(got) != spans(want):
        log.warning("entities differ from the pipeline's: %s != %s", spans(got), spans(want))
        return 1.0
    return max((abs(g["score"] - w["score"]) for g, w in zip(got, want, strict=True)), default=0.0)


def discordant_pairs(got: np.ndarray, want: np.ndarray, tie: float) -> int:
    """Pairs (i, j) with want[i] > want[j] + tie that the export scores got[i] <= got[j]."""
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    return sum(
        1
        for i in range(len(want))
        for j in range(len(want))
        if want[i] > want[j] + tie and got[i] <= got[j]
    )


def ranking_figure(
    got: dict[str, np.ndarray], wants: list[dict[str, Any]], threshold: Threshold
) -> int | None:
    """discordant_pairs of one probe batch's SCOREs, or None when the run has no scores."""
    if not wants or OUTPUT_SCORE not in wants[0]:
        return None
    want = np.concatenate([w[OUTPUT_SCORE] for w in wants])
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return discordant_pairs(got[OUTPUT_SCORE][:, 0], want, threshold.max_scaled_diff * scale)


def family_threshold(adapter: Any, dtype: str) -> Threshold:
    """The dtype's bar, with the family's tighter score limit where it sets one."""
    limits = getattr(adapter, "parity_score_limits", {})
    if dtype in limits:
        return replace(THRESHOLDS[dtype], max_scaled_diff=limits[dtype])
    return THRESHOLDS[dtype]


def check_parity(
    adapter: Any,
    model: Any,
    hf_tokenizer: Any,
    plan: ExportPlan,
    onnx_path: Path,
    encoder: TextEncoder,
    dtype: str,
    session: Any = None,
) -> list[ParityResult]:
    """One ParityResult per contract output; raises nothing (see `raise_on_failure`). `session`:
    one that runs `onnx_path` in a particular way (a LoRA adapter active), else a plain one."""
    session = session or onnx_session(onnx_path)
    threshold = family_threshold(adapter, dtype)
    per_output: dict[str, tuple[str, dict[str, float]]] = {}
    ranking: dict[str, float] = {}
    for run in probe_runs(plan):
        got = exported_outputs(session, encoder, plan, run)
        wants = reference_outputs(adapter, model, hf_tokenizer, plan, run)
        for row, want in enumerate(wants):
            for output, (metric, value) in compare_text(plan.task, got, row, want).items():
                per_output.setdefault(output, (metric, {}))[1][f"{run.label}/{row}"] = value
        discordant = ranking_figure(got, wants, threshold)
        if discordant is not None:
            ranking[f"{run.label}/all"] = float(discordant)
    results = []
    per_metric = list(per_output.items())
    if ranking:
        per_metric.append((OUTPUT_SCORE, (DISCORDANT_PAIRS, ranking)))
    for output, (metric, details) in per_metric:
        # The verdict on the measured figures; only the recorded details are rounded.
        if metric == MIN_COSINE:
            value, limit = min(details.values()), threshold.min_cosine
            passed = value >= limit
        else:
            limit = 0.0 if metric == DISCORDANT_PAIRS else threshold.max_scaled_diff
            value = max(details.values())
            passed = value <= limit
        results.append(
            ParityResult(
                dtype=dtype,
                metric=metric,
                value=value,
                threshold=limit,
                passed=bool(passed),
                details={probe: round(figure, 9) for probe, figure in details.items()},
                output=output,
            )
        )
    return results


def raise_on_failure(results: list[ParityResult], what: str) -> None:
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    lines = [
        f"  {r.output} {r.dtype}: {r.metric} {r.value:.10g} (threshold {r.threshold:g});"
        f" worst probe {_worst(r)}"
        for r in failed
    ]
    raise ParityError(f"{what} failed parity against the PyTorch reference:\n" + "\n".join(lines))


def _worst(result: ParityResult) -> str:
    figures = result.details
    pick = min if result.metric == MIN_COSINE else max
    key = pick(figures, key=figures.__getitem__)
    return f"{key} = {figures[key]:.6g}"


def format_table(results: list[ParityResult]) -> str:
    rows = [("output", "dtype", "metric", "value", "threshold", "result")]
    for r in results:
        rows.append(
            (
                r.output,
                r.dtype,
                r.metric,
                f"{r.value:.7f}",
                f"{r.threshold:g}",
                "ok" if r.passed else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )
