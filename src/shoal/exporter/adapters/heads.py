"""Families defined by a head on top of an encoder: cross-encoder rerankers, token classifiers,
ColBERT, SPLADE and bge-m3. They are detected before the plain encoders that share their model_type."""

from __future__ import annotations

import json
import string
import struct
from typing import Any

from shoal.contract import (
    OUTPUT_COLBERT_VECTORS,
    OUTPUT_ENTITIES,
    OUTPUT_SCORE,
    OUTPUT_SPARSE_VALUES,
    Pooling,
    Task,
)
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import register
from shoal.exporter.errors import ExportError
from shoal.exporter.options import ExportPlan


def _architecture_endswith(checkpoint: Any, suffix: str) -> bool:
    return any(a.endswith(suffix) for a in checkpoint.architectures)


def _inputs(adapter: Adapter, encoded: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in encoded.items() if k in adapter.graph_input_names()}


class ClassifierHeadAdapter(Adapter):
    """A transformers `*For<Head>` class on an encoder: detected by its architecture (the one
    entry of `heads`); BERT's graph takes token_type_ids, the others' do not."""

    default_pooling = None
    detection_priority = 10

    @classmethod
    def matches(cls, checkpoint: Any) -> bool:
        return checkpoint.model_type in cls.model_types and _architecture_endswith(
            checkpoint, cls.heads[0]
        )

    @property
    def token_type_ids(self) -> bool:  # type: ignore[override]
        return self.checkpoint.model_type == "bert"


# ---------------------------------------------------------------- reranker


@register
class RerankerAdapter(ClassifierHeadAdapter):
    """Cross-encoders (`*ForSequenceClassification`): one score per (query, document) pair."""

    name = "reranker"
    model_types = ("bert", "xlm-roberta", "modernbert")
    tasks = (Task.RERANK,)
    auto_class = "AutoModelForSequenceClassification"
    heads = ("ForSequenceClassification",)

    def manifest_extra(self) -> dict[str, Any]:
        return {"num_labels": int(self.checkpoint.config.get("num_labels", 1) or 1)}

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import Logits

        return Logits(model, self.token_type_ids)

    def reference(self, model: Any, plan: ExportPlan, encoded: dict[str, Any]) -> dict[str, Any]:
        import torch

        score = model(**_inputs(self, encoded)).logits[0, :1]
        if plan.postprocessing.get("score_activation") == "sigmoid":
            score = torch.sigmoid(score)
        return {OUTPUT_SCORE: score.detach().double().numpy()}


# ---------------------------------------------------------------- token classification


@register
class TokenClassificationAdapter(ClassifierHeadAdapter):
    """Token classifiers (`*ForTokenClassification`, NER): per-token labels joined into
    entities with character offsets, as transformers' token-classification pipeline does."""

    name = "token-classification"
    model_types = ("bert", "xlm-roberta", "deberta-v2")
    tasks = (Task.EXTRACT,)
    auto_class = "AutoModelForTokenClassification"
    heads = ("ForTokenClassification",)

    def labels(self) -> list[str]:
        """config.json's id2label in id order (the logits' order)."""
        config = self.checkpoint.config
        id2label = config.get("id2label") or {}
        count = int(config.get("num_labels") or len(id2label) or 0)
        try:
            labels = [
                str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(count)
            ]
        except KeyError as exc:
            raise ExportError(
                f"{self.checkpoint.path / 'config.json'} has no id2label entry for label "
                f"{exc}; give every one of its {count} labels a name"
            ) from None
        if not labels:
            raise ExportError(
                f"{self.checkpoint.path / 'config.json'} names no labels (id2label); a token "
                "classifier needs them"
            )
        return labels

    def postprocessing_extra(self, tokenization: dict[str, Any]) -> dict[str, Any]:
        return {"labels": self.labels(), "ignore_labels": ["O"]}

    def manifest_extra(self) -> dict[str, Any]:
        return {"labels": self.labels()}

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import TokenLogits

        return TokenLogits(model, self.token_type_ids)

    def reference(self, model: Any, plan: ExportPlan, encoded: dict[str, Any]) -> dict[str, Any]:
        from shoal.postprocessing import GRAPH_TOKEN_LOGITS

        logits = model(**_inputs(self, encoded)).logits[0]
        return {GRAPH_TOKEN_LOGITS: logits.detach().double().numpy()}

    def reference_texts(
        self, model: Any, hf_tokenizer: Any, plan: ExportPlan, texts: list[str]
    ) -> list[dict[str, Any]]:
        """The entities of transformers' token-classification pipeline, truncating where the
        export does."""
        import transformers

        hf_tokenizer.model_max_length = plan.max_length
        pipeline = transformers.pipeline(
            "token-classification",
            model=model,
            tokenizer=hf_tokenizer,
            aggregation_strategy=plan.postprocessing["aggregation"],
            device="cpu",
        )
        found = []
        for text in texts:
            entities = pipeline(text)
            found.append(
                {
                    OUTPUT_ENTITIES: [
                        {
                            "label": e["entity_group"],
                            "score": float(e["score"]),
                            "start": int(e["start"]),
                            "end": int(e["end"]),
                        }
                        for e in entities
                    ]
                }
            )
        return found


# ---------------------------------------------------------------- ColBERT


def safetensors_shape(checkpoint: Any, key: str) -> list[int] | None:
    """The shape of weight `key` from model.safetensors' JSON header (no tensor is read), or None
    when the checkpoint has no such file or weight."""
    if not checkpoint.has("model.safetensors"):
        return None
    try:
        with open(checkpoint.path / "model.safetensors", "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        return [int(n) for n in header[key]["shape"]]
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _load_state_tensor(checkpoint: Any, key: str) -> Any:
    import torch

    if checkpoint.has("model.safetensors"):
        from safetensors import safe_open

        with safe_open(str(checkpoint.path / "model.safetensors"), framework="pt") as handle:
            if key in handle.keys():  # noqa: SIM118  (safe_open has keys(), not __contains__)
                return handle.get_tensor(key)
    elif checkpoint.has("pytorch_model.bin"):
        state = torch.load(
            checkpoint.path / "pytorch_model.bin", map_location="cpu", weights_only=True
        )
        if key in state:
            return state[key]
    raise ExportError(f"{checkpoint.path} has no {key!r} weight, which a ColBERT checkpoint holds")


@register
class ColbertAdapter(Adapter):
    """colbert-ai's HF_ColBERT: BERT + a bias-free `linear` projection; [Q]/[D] markers after
    [CLS]; queries padded with [MASK] to query_maxlen; punctuation dropped from documents."""

    name = "colbert"
    model_types = ("bert",)
    tasks = (Task.COLBERT,)
    default_pooling = None
    token_type_ids = True
    detection_priority = 10

    @classmethod
    def matches(cls, checkpoint: Any) -> bool:
        return checkpoint.model_type in cls.model_types and (
            "HF_ColBERT" in checkpoint.architectures or checkpoint.has("artifact.metadata")
        )

    @property
    def metadata(self) -> dict[str, Any]:
        return self.checkpoint.read_json("artifact.metadata")

    def output_width(self, task: Task) -> int:
        shape = safetensors_shape(self.checkpoint, "linear.weight")  # no torch: plans stay light
        if shape is None:
            shape = list(_load_state_tensor(self.checkpoint, "linear.weight").shape)
        return int(shape[0])

    def default_max_length(self) -> int | None:
        return self.metadata.get("doc_maxlen") or super().default_max_length()

    def tokenization_extra(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "colbert_markers": (
                meta.get("query_token_id", "[unused0]"),
                meta.get("doc_token_id", "[unused1]"),
            ),
            "colbert_query_length": meta.get("query_maxlen", 32),
        }

    def postprocessing_extra(self, tokenization: dict[str, Any]) -> dict[str, Any]:
        from tokenizers import Tokenizer

        colbert = dict(tokenization["colbert"])
        skiplist: list[int] = []
        if self.metadata.get("mask_punctuation", True):
            tokenizer = Tokenizer.from_file(str(self.checkpoint.path / "tokenizer.json"))
            ids = (tokenizer.token_to_id(symbol) for symbol in string.punctuation)
            skiplist = sorted({i for i in ids if i is not None})
        return {
            "colbert": {
                "query_marker_id": colbert["query_marker_id"],
                "document_marker_id": colbert["document_marker_id"],
                "mask_token_id": colbert["mask_token_id"],
                "skiplist_ids": skiplist,
            }
        }

    def manifest_extra(self) -> dict[str, Any]:
        meta = self.metadata
        return {"colbert": {k: meta[k] for k in ("query_maxlen", "doc_maxlen", "dim") if k in meta}}

    def load(self) -> Any:
        import torch

        model = super().load()
        weight = _load_state_tensor(self.checkpoint, "linear.weight")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight.float())
        model.shoal_colbert_linear = linear
        return model

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import ColbertVectors

        return ColbertVectors(model, model.shoal_colbert_linear)

    def reference(self, model: Any, plan: ExportPlan, encoded: dict[str, Any]) -> dict[str, Any]:
        from shoal.exporter import reference

        hidden = model(**_inputs(self, encoded)).last_hidden_state[0]
        vectors = model.shoal_colbert_linear(hidden)
        ids = encoded["input_ids"][0].tolist()
        colbert = plan.postprocessing["colbert"]
        is_document = len(ids) > 1 and ids[1] == colbert["document_marker_id"]
        skip = set(colbert["skiplist_ids"]) if is_document else set()
        # Queries: every position, [MASK] augmentation included; documents: attended tokens only.
        attended = encoded["attention_mask"][0].tolist()
        keep = [
            i
            for i, (t, m) in enumerate(zip(ids, attended, strict=True))
            if t not in skip and (m or not is_document)
        ]
        return {OUTPUT_COLBERT_VECTORS: reference.normalized_rows(vectors[keep])}


# ---------------------------------------------------------------- SPLADE


@register
class SpladeAdapter(Adapter):
    name = "splade"
    model_types = ("bert",)
    tasks = (Task.SPARSE,)
    default_pooling = None
    token_type_ids = True
    detection_priority = 5
    auto_class = "AutoModelForMaskedLM"
    heads = ("ForMaskedLM",)

    @classmethod
    def matches(cls, checkpoint: Any) -> bool:
        return checkpoint.model_type in cls.model_types and _architecture_endswith(
            checkpoint, "ForMaskedLM"
        )

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import SpladeWeights

        return SpladeWeights(model)

    def reference(self, model: Any, plan: ExportPlan, encoded: dict[str, Any]) -> dict[str, Any]:
        import torch

        from shoal.exporter import reference

        logits = model(**_inputs(self, encoded)).logits[0]
        weights = torch.log1p(torch.relu(logits)).max(dim=0).values
        ids = torch.arange(weights.shape[0])
        terms = reference.sparse_terms(ids, weights, plan.postprocessing["special_token_ids"])
        return {OUTPUT_SPARSE_VALUES: terms}


# ---------------------------------------------------------------- bge-m3


@register
class BgeM3Adapter(Adapter):
    """BAAI/bge-m3: XLM-R with dense (CLS), sparse (sparse_linear.pt) and ColBERT
    (colbert_linear.pt) outputs from one pass, as FlagEmbedding computes them."""

    name = "bge-m3"
    model_types = ("xlm-roberta",)
    tasks = (Task.MULTI,)
    default_pooling = Pooling.CLS
    detection_priority = 10

    @classmethod
    def matches(cls, checkpoint: Any) -> bool:
        return (
            checkpoint.model_type in cls.model_types
            and checkpoint.has("colbert_linear.pt")
            and checkpoint.has("sparse_linear.pt")
        )

    def manifest_extra(self) -> dict[str, Any]:
        return {"heads": ["colbert_linear.pt", "sparse_linear.pt"]}

    def load(self) -> Any:
        model = super().load()
        from shoal.exporter.adapters.graph_modules import load_linear

        model.shoal_sparse_linear = load_linear(self.checkpoint, "sparse_linear.pt")
        model.shoal_colbert_linear = load_linear(self.checkpoint, "colbert_linear.pt")
        return model

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import BgeM3Outputs

        return BgeM3Outputs(model, model.shoal_sparse_linear, model.shoal_colbert_linear)

    def reference(self, model: Any, plan: ExportPlan, encoded: dict[str, Any]) -> dict[str, Any]:
        import torch

        from shoal.exporter import reference

        hidden = model(**_inputs(self, encoded)).last_hidden_state[0]
        out = reference.dense_outputs(hidden, plan)
        weights = torch.relu(model.shoal_sparse_linear(hidden)).squeeze(-1)
        ids = encoded["input_ids"][0]
        out[OUTPUT_SPARSE_VALUES] = reference.sparse_terms(
            ids, weights, plan.postprocessing["special_token_ids"]
        )
        out[OUTPUT_COLBERT_VECTORS] = reference.normalized_rows(
            model.shoal_colbert_linear(hidden[1:])
        )
        return out
