"""LLM rerankers end to end: a tiny random Qwen3ForCausalLM exported with task rerank, served by a
real Triton, called with plain tritonclient over HTTP and gRPC exactly as a cross-encoder (QUERY and
TEXT in, SCORE out). Each SCORE equals Qwen3-Reranker's model card computed right here on the same
checkpoint (its prompt, its truncation, transformers' full forward and softmax over the [no, yes]
logits) within 1e-5, and ranks the documents the same; raw exports give logit(yes) - logit(no).
Over-long pairs are truncated as the model card does (the document's end first, then the query's);
bad bytes are refused for that request alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.contract import INPUT_QUERY, INPUT_TEXT, OUTPUT_SCORE
from tests.support.triton import serving_entries

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

MAX_LENGTH = 192  # the tiny tokenizer's prompt takes 77 tokens, the instruction and query ~40
MAX_TEXT_BYTES = 4096
TOLERANCE = 1e-5
ENTRIES = {"qwen-rerank": "sigmoid", "qwen-rerank-raw": "raw"}
INSTRUCTION = "Given a question about fish, retrieve passages that answer it"
QUERY = "where do fish live?"
DOCUMENTS = [
    "Fish live in water: rivers, lakes and seas.",
    "Café naïve résumé, 東京は日本の首都です 🐟🚀 Москва",
    "",
    "The operator places models on pools of GPUs.",
    "fish " * 200,  # longer than max length on its own: its end is cut
]
# The model card's template, as written there (not shoal's code).
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class ModelCard:
    """Qwen3-Reranker's model card usage (format_instruction, process_inputs, compute_logits)."""

    def __init__(self, checkpoint: Path) -> None:
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(checkpoint), padding_side="left"
        )
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")
        self.prefix_tokens = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(SUFFIX, add_special_tokens=False)

    def inputs(self, pairs: list[tuple[str, str]]):
        texts = [f"<Instruct>: {INSTRUCTION}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
        inputs = self.tokenizer(
            texts,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=MAX_LENGTH - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ids in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ids + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=MAX_LENGTH)

    def scores(self, pairs: list[tuple[str, str]], activation: str) -> np.ndarray:
        """One pair at a time (no padding), as the reference."""
        import torch

        out = []
        with torch.no_grad():
            for pair in pairs:
                logits = self.model(**self.inputs([pair])).logits[:, -1, :]
                yes, no = logits[:, self.yes], logits[:, self.no]
                if activation == "sigmoid":
                    pair_logits = torch.nn.functional.log_softmax(torch.stack([no, yes], 1), 1)
                    out.append(float(pair_logits[0, 1].exp()))
                else:
                    out.append(float(yes[0] - no[0]))
        return np.array(out)


@pytest.fixture(scope="module")
def checkpoint(tiny_model) -> Path:
    return tiny_model("llm-reranker")


@pytest.fixture(scope="module")
def model_card(checkpoint) -> ModelCard:
    return ModelCard(checkpoint)


@pytest.fixture(scope="module")
def repository(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shoal.exporter.export import export_model
    from shoal.exporter.options import ExportOptions
    from shoal.model_repository.entry import EntryOptions

    repository = tmp_path_factory.mktemp("llm-rerank") / "repository"
    for name, score in ENTRIES.items():
        options = ExportOptions(
            task="rerank",
            score=score,
            instruction=INSTRUCTION,
            runtime="portable",
            max_length=MAX_LENGTH,
            entry=EntryOptions(encode_threads=1, max_text_bytes=MAX_TEXT_BYTES),
        )
        manifest = export_model(checkpoint, name, repository, options)
        assert manifest.architecture == "llm-reranker"
        assert all(r.passed for r in manifest.parity)
    return repository


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with serving_entries(repository, ENTRIES, tmp_path_factory) as running:
        yield running


def client_for(server, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_address)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_address)


def _bytes_input(module, name: str, rows: list[bytes]):
    tensor = module.InferInput(name, [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[r] for r in rows], dtype=object))
    return tensor


def rerank(server, protocol: str, name: str, queries: list[str], documents: list[str]):
    return rerank_bytes(
        server, protocol, name, [q.encode() for q in queries], [d.encode() for d in documents]
    )


def rerank_bytes(server, protocol: str, name: str, queries: list[bytes], documents: list[bytes]):
    module, client = client_for(server, protocol)
    result = client.infer(
        name,
        [_bytes_input(module, INPUT_QUERY, queries), _bytes_input(module, INPUT_TEXT, documents)],
        outputs=[module.InferRequestedOutput(OUTPUT_SCORE)],
    )
    scores = result.as_numpy(OUTPUT_SCORE)
    assert scores.shape == (len(documents), 1) and scores.dtype == np.float32
    return scores[:, 0].astype(np.float64)


def test_the_exported_repository_checks_clean(repository) -> None:
    from shoal.model_repository.repository import check_repository

    reports = check_repository(repository)
    assert sorted(r.name for r in reports) == sorted(ENTRIES)
    assert {r.name: r.problems for r in reports if r.problems} == {}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", list(ENTRIES))
def test_scores_equal_the_model_card_and_rank_the_same(
    server, model_card, name: str, protocol: str
) -> None:
    queries = [QUERY] * len(DOCUMENTS)
    got = rerank(server, protocol, name, queries, DOCUMENTS)
    want = model_card.scores(list(zip(queries, DOCUMENTS, strict=True)), ENTRIES[name])
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() / scale <= TOLERANCE, (got, want)
    assert list(np.argsort(-got)) == list(np.argsort(-want))
    assert len(set(np.round(want, 4))) == len(want)  # distinct scores: the ranking means something
    if ENTRIES[name] == "sigmoid":
        assert ((got > 0) & (got < 1)).all()


def test_the_sigmoid_entry_is_the_sigmoid_of_the_raw_entry(server) -> None:
    queries = [QUERY] * len(DOCUMENTS)
    raw = rerank(server, "grpc", "qwen-rerank-raw", queries, DOCUMENTS)
    probability = rerank(server, "grpc", "qwen-rerank", queries, DOCUMENTS)
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-raw)), atol=1e-6)


def test_a_batch_gives_the_same_scores_as_single_pairs(server) -> None:
    queries = [QUERY, "capital of France", "東京 🐟", ""]
    documents = DOCUMENTS[:4]
    together = rerank(server, "http", "qwen-rerank", queries, documents)
    alone = [
        rerank(server, "http", "qwen-rerank", [q], [d])[0]
        for q, d in zip(queries, documents, strict=True)
    ]
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_over_long_pairs_are_truncated_as_the_model_card_does(server, model_card) -> None:
    """The filled template loses its end: words past max length in a document never change its
    score, and a query that fills the room leaves no document at all."""
    long_document = "fish live in water " * 40
    endings = [long_document + "and in the sea", long_document + "but never on GPUs"]
    long_query = "where do fish live? " * 40
    queries = [QUERY, QUERY, long_query, long_query]
    documents = [*endings, "Fish live in water.", "The operator places models."]
    got = rerank(server, "grpc", "qwen-rerank", queries, documents)
    assert got[0] == pytest.approx(got[1], abs=1e-6)
    assert got[2] == pytest.approx(got[3], abs=1e-6)
    want = model_card.scores(list(zip(queries, documents, strict=True)), "sigmoid")
    assert np.abs(got - want).max() <= TOLERANCE
    short = rerank(server, "grpc", "qwen-rerank", [QUERY], ["fish live in water"])
    assert abs(short[0] - got[0]) > 1e-4  # the truncated document still counts


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("queries", "documents", "fragment"),
    [
        ([b"fish?", b"ok"], [b"fine", b"bad \xff bytes"], "TEXT[1] is not valid UTF-8"),
        ([b"\xc3("], [b"fine"], "QUERY[0] is not valid UTF-8"),
        (
            [b"fish?"],
            [b"x" * (MAX_TEXT_BYTES + 1)],
            f"TEXT[0] is {MAX_TEXT_BYTES + 1} bytes, over the limit of {MAX_TEXT_BYTES} bytes",
        ),
    ],
)
def test_bad_input_is_refused_for_that_request_alone(
    server, protocol: str, queries, documents, fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        rerank_bytes(server, protocol, "qwen-rerank", queries, documents)
    assert fragment in str(caught.value)
    assert len(rerank(server, protocol, "qwen-rerank", [QUERY], ["fish"])) == 1


def test_the_docs_example_runs_against_the_served_entry(server) -> None:
    """docs/tasks.md's `tasks-llm-rerank` example, as written but for the server's address."""
    from tests.docs.test_doc_examples import run_example_against

    stdout = run_example_against("tasks-llm-rerank", server.http_address)
    assert "Fish live in water" in stdout
