"""GLiNER (PyPI `gliner`): zero-shot span extraction, task extract-zero-shot.

The graph is gliner's own model forward (the encoder over the label prompt and the words, the
span-marker head, the label projection): input ids with the prompt prepended, attention mask,
words mask, text lengths, span indices and span mask in, span logits [B, words, max_width, labels]
out, as gliner's own ONNX export. Prompt building and word splitting (tokenize step) and span
decoding (postprocess step) are shoal.span_extraction, checked on every export against gliner's
`inference` (the code behind `predict_entities`) on probe texts with probe label sets.

Only UniEncoderSpan models (span_mode markerV0 and kin, labels in the prompt) are exported: the
token-level, bi-encoder, decoder and relation variants take other inputs and are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shoal.contract import OUTPUT_ENTITIES, Task
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import register
from shoal.exporter.checkpoint import GLINER_MODEL_TYPE
from shoal.exporter.errors import ExportError
from shoal.exporter.options import SCORE_RAW, ExportOptions, ExportPlan
from shoal.span_extraction import (
    GRAPH_INPUTS,
    GRAPH_SPAN_LOGITS,
    TASK,
    SpanPromptEncoder,
    postprocess,
)

DEFAULT_THRESHOLD = 0.5  # gliner's predict_entities default
# gliner config keys that select another architecture than UniEncoderSpan, with its name.
UNSUPPORTED_VARIANTS = {
    "labels_encoder": "bi-encoder (labels encoded apart)",
    "labels_decoder": "decoder (generated labels)",
    "relations_layer": "relation extraction",
}
# Probe label sets: shared by a batch, then one set per text (different label counts).
PROBE_LABELS = ("person", "city", "country", "organization")
ROW_LABELS = (["city"], ["person", "date", "city"], ["organization", "person"])


@register
class GlinerAdapter(Adapter):
    name = "gliner"
    model_types = (GLINER_MODEL_TYPE,)
    tasks = (Task.EXTRACT_ZERO_SHOT,)
    default_pooling = None
    detection_priority = 10
    heads = ()

    @property
    def gliner_config(self) -> dict[str, Any]:
        return dict(self.checkpoint.config.get("gliner") or {})

    # ------------------------------------------------------------------ planning

    def check_variant(self) -> None:
        config, where = self.gliner_config, self.checkpoint.path / "gliner_config.json"
        for key, variant in UNSUPPORTED_VARIANTS.items():
            if config.get(key):
                raise ExportError(
                    f"{where} sets {key}: a {variant} GLiNER, which shoal does not export; shoal "
                    "exports GLiNER span models with the labels in the prompt (uni-encoder)"
                )
        if config.get("span_mode") == "token_level" or config.get("precomputed_prompts_mode"):
            raise ExportError(
                f"{where}: span_mode {config.get('span_mode')!r} / precomputed prompts are not "
                "exported; shoal exports GLiNER span models with the labels in the prompt"
            )

    def plan(self, options: ExportOptions) -> ExportPlan:
        self.check_variant()
        if options.task and options.task != TASK:
            raise ExportError(f"family 'gliner' exports task {TASK!r}, not {options.task!r}")
        given = {
            "--pooling": options.pooling,
            "--dims": options.dims,
            "--matryoshka": options.matryoshka or None,
            "--aggregation": options.aggregation,
            "--query-prefix": options.query_prefix,
            "--document-prefix": options.document_prefix,
            "--score": None if options.score == SCORE_RAW else options.score,
        }
        wrong = [flag for flag, value in given.items() if value]
        if wrong:
            verb = "does" if len(wrong) == 1 else "do"
            raise ExportError(f"{', '.join(wrong)} {verb} not apply to task {TASK} (GLiNER)")
        tokenization = self.tokenization(options.max_length)
        return ExportPlan(
            family=self.name,
            task=Task.EXTRACT_ZERO_SHOT,
            pooling=None,
            normalize=False,
            max_length=tokenization["max_length"],
            dims=None,
            hidden_size=self.hidden_size,
            prefixes={},
            tokenization=tokenization,
            postprocessing={"flat_ner": True},
            extra={
                "max_width": tokenization["max_width"],
                "max_labels": tokenization["max_labels"],
                "default_threshold": DEFAULT_THRESHOLD,
                # spans per text: up to max_width per word (TensorRT profiles)
                "tensorrt_axis_scale": {
                    "span_idx": tokenization["max_width"],
                    "span_mask": tokenization["max_width"],
                },
            },
        )

    def tokenization(self, max_length: int | None) -> dict[str, Any]:
        """shoal.span_extraction.SpanPromptEncoder settings from the folder's configs."""
        from tokenizers import Tokenizer

        config = self.gliner_config
        tokenizer = Tokenizer.from_file(str(self.checkpoint.path / "tokenizer.json"))
        tok_config = self.checkpoint.read_json("tokenizer_config.json")
        ids = {}
        for role, token in (
            ("ent_token", config.get("ent_token", "<<ENT>>")),
            ("sep_token", config.get("sep_token", "<<SEP>>")),
            ("pad_token", tok_config.get("pad_token") or "[PAD]"),
        ):
            ids[role] = tokenizer.token_to_id(str(token))
            if ids[role] is None:
                raise ExportError(
                    f"{self.checkpoint.path / 'tokenizer.json'} has no {role} {token!r}; save the "
                    "GLiNER model's own tokenizer beside it (gliner's save_pretrained does)"
                )
        # gliner truncates prompt + words at the tokenizer's model_max_length (--max-length sets
        # it, for the parity reference too); the encoder's positions bound it
        positions = int(self.checkpoint.config.get("max_position_embeddings") or 512)
        limit = min(int(tok_config.get("model_max_length") or positions), positions)
        if max_length is not None and max_length > positions:
            raise ExportError(
                f"--max-length {max_length} exceeds the encoder's {positions} positions"
            )
        return {
            "max_length": max_length or limit,
            "padding_side": "right",
            "pad_token_id": int(ids["pad_token"]),
            "ent_token": str(config.get("ent_token", "<<ENT>>")),
            "sep_token": str(config.get("sep_token", "<<SEP>>")),
            "max_width": int(config.get("max_width", 12)),
            "max_words": int(config.get("max_len", 384)),
            "max_labels": int(config.get("max_types", 25)),
            "subtoken_pooling": str(config.get("subtoken_pooling", "first")),
            "default_threshold": DEFAULT_THRESHOLD,
        }

    # ------------------------------------------------------------------ graph

    def load(self) -> Any:
        try:
            from gliner import GLiNER
        except ImportError as exc:
            raise ExportError(
                f"exporting GLiNER needs the `gliner` package ({exc}); install it "
                "(scripts/setup-env.sh does)"
            ) from exc
        try:
            model = GLiNER.from_pretrained(
                str(self.checkpoint.path), local_files_only=True, map_location="cpu"
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ExportError(
                f"cannot load the GLiNER model in {self.checkpoint.path}: {exc}"
            ) from exc
        return model.eval()

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        return span_logits_module(model)

    def graph_input_names(self) -> list[str]:
        return list(GRAPH_INPUTS)

    def graph_axes(self) -> dict[str, dict[int, str]]:
        tokens = {0: "batch", 1: "sequence"}
        return {
            "input_ids": tokens,
            "attention_mask": tokens,
            "words_mask": tokens,
            "text_lengths": {0: "batch"},
            "span_idx": {0: "batch", 1: "spans"},
            "span_mask": {0: "batch", 1: "spans"},
            GRAPH_SPAN_LOGITS: {0: "batch", 1: "words", 3: "labels"},
        }

    def graph_input_dims(self) -> dict[str, list[int]]:
        return {"text_lengths": [1], "span_idx": [-1, 2]}

    def graph_output_dims(self) -> dict[str, list[int]]:
        return {GRAPH_SPAN_LOGITS: [-1, int(self.gliner_config.get("max_width", 12)), -1]}

    def export_sample(self, plan: ExportPlan) -> dict[str, np.ndarray]:
        texts = ["a shoal of small fish moves as one", "fish"]
        labels = [["person", "city"], ["fish"]]  # per-row label counts differ: padding traced
        return self.encoder(plan).encode(texts, labels)

    def encoder(self, plan: ExportPlan, tokenizer_json: Any = None) -> SpanPromptEncoder:
        path = tokenizer_json or self.checkpoint.path / "tokenizer.json"
        return SpanPromptEncoder.from_file(path, plan.tokenization)

    # ------------------------------------------------------------------ parity

    def check_parity(
        self, model: Any, plan: ExportPlan, onnx_path: Any, dtype: str, tokenizer_json: Any = None
    ) -> list[Any]:
        from shoal.exporter.parity import family_threshold, onnx_session, parity_results

        session = onnx_session(Path(onnx_path))
        encoder = self.encoder(plan, tokenizer_json)
        # gliner's tokenizer truncates where the export does
        model.data_processor.transformer_tokenizer.model_max_length = plan.max_length
        per_output: dict[str, tuple[str, dict[str, float]]] = {}
        for label, texts, labels in probe_runs(plan):
            figures = compare_run(session, encoder, model, plan, texts, labels)
            for output, (metric, row_figures) in figures.items():
                for row, value in row_figures.items():
                    per_output.setdefault(output, (metric, {}))[1][f"{label}/{row}"] = value
        return parity_results(list(per_output.items()), dtype, family_threshold(self, dtype))


def span_logits_module(model: Any) -> Any:
    """gliner's model forward as a graph: GRAPH_INPUTS -> span logits."""
    import torch

    class SpanLogits(torch.nn.Module):
        output_names = (GRAPH_SPAN_LOGITS,)

        def __init__(self, core: Any) -> None:
            super().__init__()
            self.core = core

        def forward(self, input_ids, attention_mask, words_mask, text_lengths, span_idx, span_mask):  # type: ignore[no-untyped-def]  # noqa: E501
            out = self.core(
                input_ids=input_ids,
                attention_mask=attention_mask,
                words_mask=words_mask,
                text_lengths=text_lengths,
                span_idx=span_idx,
                span_mask=span_mask,
            )
            return out.logits if hasattr(out, "logits") else out[0]

    return SpanLogits(model.model).eval()


def probe_runs(plan: ExportPlan) -> list[tuple[str, list[str], list[list[str]]]]:
    from shoal.exporter.parity import PROBE_TEXTS, long_text

    texts = [*PROBE_TEXTS, long_text(plan.max_length)]
    shared = list(PROBE_LABELS)
    rows = [ROW_LABELS[i % len(ROW_LABELS)] for i in range(len(texts))]
    return [
        ("batch1", texts[:1], [shared]),
        ("padded", texts, [shared] * len(texts)),
        ("row-labels", texts, rows),
    ]


def compare_run(
    session: Any,
    encoder: SpanPromptEncoder,
    model: Any,
    plan: ExportPlan,
    texts: list[str],
    labels: list[list[str]],
) -> dict[str, tuple[str, dict[int, float]]]:
    """Figures per text: span logits cosine (ONNX in a padded batch vs gliner's torch model on
    the text alone) and entity difference (shoal's steps vs gliner's own inference)."""
    import json

    import torch

    from shoal.exporter.parity import MAX_SCALED_DIFF, MIN_COSINE, _cosine, entity_difference
    from shoal.span_extraction import INPUT_LABELS, INPUT_TEXT, THRESHOLDS, WORD_OFFSETS

    tokens = encoder.encode(texts, labels)
    (logits,) = session.run(None, {name: tokens[name] for name in GRAPH_INPUTS})
    threshold = float(plan.tokenization["default_threshold"])
    inputs = {
        INPUT_TEXT: texts,
        INPUT_LABELS: [json.dumps(row) for row in labels],
        WORD_OFFSETS: tokens[WORD_OFFSETS],
        THRESHOLDS: np.full((len(texts), 1), threshold, np.float32),
    }
    entities = postprocess(
        TASK, {GRAPH_SPAN_LOGITS: logits}, None, None, plan.postprocessing, inputs
    )
    module = span_logits_module(model)
    cosines, differences = {}, {}
    for row, (text, row_labels) in enumerate(zip(texts, labels, strict=True)):
        alone = encoder.encode([text], [row_labels])
        # gliner on the words the entry keeps (a text cut at max_length tokens ends at the last
        # word that fits)
        kept = alone[WORD_OFFSETS][0, :, 1]
        seen = text[: int(kept.max())] if (kept >= 0).any() else text
        want = model.inference([seen], row_labels, threshold=threshold, flat_ner=True)[0]
        got = json.loads(entities[OUTPUT_ENTITIES][row, 0])
        differences[row] = entity_difference(got, want)
        words = int(alone["text_lengths"][0, 0])
        if not (alone[WORD_OFFSETS][0, :, 0] >= 0).any():
            continue  # gliner runs no model on a text without words
        with torch.inference_mode():
            reference = module(*(torch.from_numpy(alone[n]) for n in GRAPH_INPUTS)).numpy()[0]
        count = len(dict.fromkeys(row_labels))
        valid = alone["span_mask"][0].reshape(words, -1)
        cosines[row] = _cosine(
            logits[row, :words, :, :count][valid], reference[:words, :, :count][valid]
        )
    return {
        GRAPH_SPAN_LOGITS: (MIN_COSINE, cosines),
        OUTPUT_ENTITIES: (MAX_SCALED_DIFF, differences),
    }
