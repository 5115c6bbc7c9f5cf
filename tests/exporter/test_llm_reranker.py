"""LLM rerankers (Qwen3-Reranker style): a tiny random Qwen3ForCausalLM exported with task rerank,
its graph, its prompt, and the parity check that guards it (which fails on a graph that reads the
wrong weights)."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.tokenization import TextEncoder, TokenizationError, fill_prompt

MAX_LENGTH = 128


def export(tiny_model, tmp_path, **options):
    from shoal.exporter import ExportOptions, export_model

    options = {"task": "rerank", "max_length": MAX_LENGTH, **options}
    return export_model(
        tiny_model("llm-reranker"), "qwen-rerank", tmp_path / "repo", ExportOptions(**options)
    )


def test_a_causal_lm_is_an_embedder_unless_exported_as_a_reranker(tiny_model):
    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint

    checkpoint = inspect_checkpoint(tiny_model("llm-reranker"))
    assert checkpoint.architectures == ["Qwen3ForCausalLM"]
    assert detect_adapter(checkpoint).name == "qwen3"
    assert detect_adapter(checkpoint, task="rerank").name == "llm-reranker"
    # a decoder embedder's checkpoint (Qwen3Model) is not a language model: no such reranker
    embedder = inspect_checkpoint(tiny_model("qwen3"))
    assert detect_adapter(embedder, task="rerank").name == "qwen3"


@pytest.mark.slow
@pytest.mark.parametrize("score", ["sigmoid", "raw"])
def test_the_export_is_at_parity_within_1e_5_and_ranks_as_the_reference(
    score, tiny_model, tmp_path
):
    manifest = export(tiny_model, tmp_path, score=score)
    assert manifest.architecture == "llm-reranker" and manifest.task == "rerank"
    assert manifest.padding_side == "left"
    by_metric = {r.metric: r for r in manifest.parity}
    assert set(by_metric) == {"max_scaled_diff", "discordant_pairs"}
    assert all(r.passed and r.output == "SCORE" for r in manifest.parity)
    assert by_metric["max_scaled_diff"].threshold == 1e-5
    assert by_metric["max_scaled_diff"].value <= 1e-5
    assert by_metric["discordant_pairs"].value == 0
    assert manifest.extra["parity_thresholds"]["fp32"]["max_scaled_diff"] == 1e-5
    assert set(by_metric["discordant_pairs"].details) == {"batch1/all", "padded/all"}
    assert manifest.extra["postprocessing"]["score_activation"] == (
        "sigmoid" if score == "sigmoid" else "none"
    )


@pytest.mark.slow
def test_the_probe_pairs_score_apart_so_parity_compares_something(tiny_model):
    """At the export's max length the documents still fit beside the prompt: the reference
    scores of the probe batch differ (a prompt that crowded them out would score every pair
    the same, and the ranking check would compare ties)."""
    from transformers import AutoTokenizer

    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint
    from shoal.exporter.options import ExportOptions
    from shoal.exporter.parity import probe_runs, reference_outputs

    folder = tiny_model("llm-reranker")
    adapter = detect_adapter(inspect_checkpoint(folder), task="rerank")
    plan = adapter.plan(ExportOptions(task="rerank", max_length=MAX_LENGTH, score="sigmoid"))
    padded = next(run for run in probe_runs(plan) if run.label == "padded")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    wants = reference_outputs(adapter, adapter.load(), tokenizer, plan, padded)
    scores = [float(w["SCORE"][0]) for w in wants]
    assert len({round(s, 3) for s in scores}) == len(scores), scores


@pytest.mark.slow
def test_a_qwen2_causal_lm_exports_at_parity_too(tiny_model, tmp_path):
    from shoal.exporter import ExportOptions, export_model

    checkpoint = tiny_model("llm-reranker", backbone="qwen2")
    options = ExportOptions(task="rerank", max_length=MAX_LENGTH, score="sigmoid")
    manifest = export_model(checkpoint, "qwen2-rerank", tmp_path / "repo", options)
    assert (manifest.architecture, manifest.model_type) == ("llm-reranker", "qwen2")
    assert manifest.parity and all(r.passed for r in manifest.parity)


@pytest.mark.slow
def test_the_graph_holds_two_lm_head_rows_not_the_vocabulary(tiny_model, tmp_path):
    import onnx
    from safetensors import safe_open

    from shoal.model_repository.layout import EntryLayout

    manifest = export(tiny_model, tmp_path)
    layout = EntryLayout(tmp_path / "repo", manifest.name, manifest.version)
    graph = onnx.load(str(layout.onnx_path))
    with safe_open(str(tiny_model("llm-reranker") / "model.safetensors"), "np") as weights:
        head = weights.get_tensor("lm_head.weight")
    vocabulary, hidden = head.shape
    shapes = [tuple(t.dims) for t in graph.graph.initializer]
    assert shapes.count((vocabulary, hidden)) == 1  # the input embedding; no LM head
    (output,) = graph.graph.output
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", 1]
    # the two rows, as the Linear's weight or folded into a MatMul's [hidden, 2] operand
    arrays = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer]
    yes, no = manifest.extra["yes_token_id"], manifest.extra["no_token_id"]
    rows = head[[yes, no]]
    assert any(np.array_equal(a, rows) or np.array_equal(a, rows.T) for a in arrays)


@pytest.mark.slow
def test_parity_fails_when_the_graph_reads_the_input_embeddings(tiny_model, tmp_path, monkeypatch):
    """The tiny checkpoint's LM head is untied: a graph taking the yes/no rows from the input
    embeddings instead scores otherwise, and the export stops."""
    from shoal.exporter.adapters import graph_modules
    from shoal.exporter.errors import ParityError

    class WrongRows(graph_modules.YesNoLogit):
        def __init__(self, model, yes_id, no_id):
            super().__init__(model, yes_id, no_id)
            embeddings = model.get_input_embeddings().weight.detach()
            with __import__("torch").no_grad():
                self.answers.weight.copy_(embeddings[[yes_id, no_id]])

    monkeypatch.setattr(graph_modules, "YesNoLogit", WrongRows)
    with pytest.raises(ParityError, match="SCORE fp32: max_scaled_diff"):
        export(tiny_model, tmp_path)


@pytest.mark.slow
def test_the_instruction_prefix_and_suffix_are_export_options(tiny_model, tmp_path):
    """A checkpoint trained with another chat format (here: no think block, a shorter system
    turn) is exported with its own prompt, and verified with it."""
    prefix = "<|im_start|>system\nAnswer yes or no.<|im_end|>\n<|im_start|>user\n"
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    manifest = export(
        tiny_model,
        tmp_path,
        instruction="Find recipes for {the} query",
        prompt_prefix=prefix,
        prompt_suffix=suffix,
    )
    prompt = manifest.extra["tokenization"]["prompt"]
    assert prompt["template"] == (
        "<Instruct>: Find recipes for {the} query\n<Query>: {query}\n<Document>: {document}"
    )
    assert (prompt["prefix"], prompt["suffix"]) == (prefix, suffix)
    assert manifest.extra["instruction"] == "Find recipes for {the} query"
    assert all(r.passed for r in manifest.parity)
    # `shoal verify` re-plans without the options: the entry's own prompt is what it checks
    from shoal.exporter import verify_entry

    verified = verify_entry(tmp_path / "repo" / manifest.name)
    assert [(r.metric, r.value) for r in verified] == [(r.metric, r.value) for r in manifest.parity]


def test_instruction_is_refused_by_other_families(tiny_model):
    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint
    from shoal.exporter.errors import ExportError
    from shoal.exporter.options import ExportOptions

    adapter = detect_adapter(inspect_checkpoint(tiny_model("reranker")))
    for option in ("instruction", "prompt_prefix", "prompt_suffix"):
        with pytest.raises(ExportError, match="--prompt-suffix apply to LLM rerankers"):
            adapter.plan(ExportOptions(**{option: "Judge"}))


def test_a_max_length_without_room_for_query_and_document_is_refused(tiny_model):
    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint
    from shoal.exporter.errors import ExportError
    from shoal.exporter.options import ExportOptions

    adapter = detect_adapter(inspect_checkpoint(tiny_model("llm-reranker")), task="rerank")
    with pytest.raises(ExportError, match=r"max_length 64 leaves no room .* take 77 tokens"):
        adapter.plan(ExportOptions(task="rerank", max_length=64))


def test_a_vocabulary_without_the_answer_tokens_is_refused(tiny_model, monkeypatch):
    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.adapters.llm_rerankers import LlmRerankerAdapter
    from shoal.exporter.checkpoint import inspect_checkpoint
    from shoal.exporter.errors import ExportError
    from shoal.exporter.options import ExportOptions

    monkeypatch.setattr(LlmRerankerAdapter, "answers", ("yes", "nope-never-a-token"))
    adapter = detect_adapter(inspect_checkpoint(tiny_model("llm-reranker")), task="rerank")
    with pytest.raises(ExportError, match="has no 'nope-never-a-token' token"):
        adapter.plan(ExportOptions(task="rerank", max_length=MAX_LENGTH))  # before any work


# ------------------------------------------------------------------ the prompt's tokenization


@pytest.fixture(scope="module")
def prompt_encoder(tiny_model):
    from shoal.exporter.adapters.llm_rerankers import (
        QWEN3_RERANKER_PREFIX,
        QWEN3_RERANKER_SUFFIX,
    )
    from shoal.tokenization import tokenization_config

    folder = tiny_model("llm-reranker")
    template = "<Instruct>: judge\n<Query>: {query}\n<Document>: {document}"
    config = tokenization_config(
        folder,
        max_length=MAX_LENGTH,
        padding_side="left",
        pairs=True,
        prompt=(QWEN3_RERANKER_PREFIX, template, QWEN3_RERANKER_SUFFIX),
    )
    return TextEncoder.from_file(folder / "tokenizer.json", config)


def test_each_pair_is_prefix_filled_template_suffix_left_padded(prompt_encoder):
    prompt = prompt_encoder.config["prompt"]
    tokens = prompt_encoder.encode(["fish?", "where do fish live?"], pairs=["in water", "sea"])
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    body = prompt_encoder.tokenizer.encode(
        "<Instruct>: judge\n<Query>: fish?\n<Document>: in water"
    )
    row = [*prompt["prefix_ids"], *body.ids, *prompt["suffix_ids"]]
    assert ids[0, ids.shape[1] - len(row) :].tolist() == row
    assert mask[:, -1].tolist() == [1, 1]  # left padding: the last token is every row's last
    assert set(tokens) == {"input_ids", "attention_mask"}


def test_a_long_document_loses_its_end_and_a_long_query_the_document(prompt_encoder):
    prompt = prompt_encoder.config["prompt"]
    suffix = prompt["suffix_ids"]
    long = "fish live in water " * 60
    tokens = prompt_encoder.encode(["where?", long], pairs=[long, "a document"])
    ids = tokens["input_ids"]
    assert ids.shape[1] == MAX_LENGTH and tokens["attention_mask"].all()
    for row in ids.tolist():
        assert row[: len(prompt["prefix_ids"])] == prompt["prefix_ids"]
        assert row[-len(suffix) :] == suffix  # never cut: the score is read after it
    decode = prompt_encoder.tokenizer.decode
    assert "<Document>: fish live" in decode(ids[0].tolist())
    assert "<Document>" not in decode(ids[1].tolist())  # the query filled the room


def test_braces_in_values_and_instruction_stay_as_written():
    template = "<Instruct>: use {json}\n<Query>: {query}\n<Document>: {document}"
    filled = fill_prompt(template, query="{document}", document="{query} {x}")
    assert filled == "<Instruct>: use {json}\n<Query>: {document}\n<Document>: {query} {x}"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"template": "{query}"}, "must hold template, prefix_ids and suffix_ids"),
        (
            {"template": "{query} {query}", "prefix_ids": [], "suffix_ids": []},
            r"must hold \{query\} and \{document\} once each",
        ),
        (
            {"template": "{query}{document}", "prefix_ids": [1] * 8, "suffix_ids": [2] * 8},
            "max_length 16 leaves no room",
        ),
    ],
)
def test_bad_prompt_settings_are_refused_with_the_rule(tiny_model, prompt, message):
    config = {
        "max_length": 16,
        "padding_side": "left",
        "pad_token_id": 0,
        "pairs": True,
        "prompt": prompt,
    }
    with pytest.raises(TokenizationError, match=message):
        TextEncoder.from_file(tiny_model("llm-reranker") / "tokenizer.json", config)
