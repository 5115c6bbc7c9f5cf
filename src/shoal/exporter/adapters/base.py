"""The adapter base class: what the export, the parity reference and the manifest need to know
about one architecture family. A family is a small subclass that overrides class attributes and,
where its head differs, `graph_module` / `reference` (see the sibling modules).

Who calls it: shoal.exporter.export (plan, load, graph module), shoal.exporter.parity (reference).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from shoal.contract import Aggregation, Pooling, Task
from shoal.exporter.checkpoint import Checkpoint, DenseModule
from shoal.exporter.errors import ExportError
from shoal.exporter.options import SCORE_RAW, ExportOptions, ExportPlan
from shoal.tokenization import TokenizationError, tokenization_config

log = logging.getLogger(__name__)

DENSE_TASKS = (Task.EMBED, Task.MULTI)
# Hugging Face head classes (by class-name suffix) that give a checkpoint its task. A family
# exports some (`Adapter.heads`); a checkpoint with any other is refused unless the task is asked
# for explicitly, so that a head is never dropped without the user saying so.
HEAD_TASKS = {
    "ForTokenClassification": "token classification",
    "ForSequenceClassification": "sequence classification",
    "ForQuestionAnswering": "question answering",
    "ForMultipleChoice": "multiple choice",
    "ForNextSentencePrediction": "next-sentence prediction",
    "ForMaskedLM": "masked language modelling",
    "ForPreTraining": "pre-training",
    "ForCausalLM": "causal language modelling",
}
# Weights a checkpoint may lack without changing what shoal exports (unused by every graph).
IGNORABLE_MISSING_PREFIXES = ("pooler.",)


class Adapter:
    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()  # Hugging Face config.model_type values
    tasks: ClassVar[tuple[Task, ...]] = (Task.EMBED,)  # first = default
    default_pooling: ClassVar[Pooling | None] = Pooling.MEAN
    padding_side: ClassVar[str] = "right"
    token_type_ids: ClassVar[bool] = False  # the graph takes a token_type_ids input
    # Detection order: heads (reranker, ColBERT, SPLADE, bge-m3) are checked before plain
    # encoders that share their model_type.
    detection_priority: ClassVar[int] = 0
    # Export with eager attention (needed for attention fusion, and for padded parity on
    # ModernBERT); the onnxruntime optimizer is asked to fuse when the model_type supports it.
    attention_implementation: ClassVar[str] = "eager"
    auto_class: ClassVar[str] = "AutoModel"
    # Head classes (HEAD_TASKS suffixes) this family exports, or leaves out as the usual
    # practice for its task: a plain encoder's embeddings ignore a pre-training head.
    heads: ClassVar[tuple[str, ...]] = ("ForMaskedLM", "ForPreTraining")
    # LLM rerankers build a prompt (--instruction, --prompt-prefix/--prompt-suffix); others refuse
    # those options.
    takes_prompt: ClassVar[bool] = False
    # Parity bars on SCORE tighter than parity.THRESHOLDS, by dtype (max_scaled_diff).
    parity_score_limits: ClassVar[dict[str, float]] = {}

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._dense_layers: list[Any] | None = None

    # ------------------------------------------------------------------ detection

    @classmethod
    def matches(cls, checkpoint: Checkpoint) -> bool:
        """Whether this family handles the checkpoint (plain encoders: by model_type)."""
        return checkpoint.model_type in cls.model_types

    # ------------------------------------------------------------------ planning

    @property
    def hidden_size(self) -> int:
        return int(self.checkpoint.config["hidden_size"])

    def output_width(self, task: Task) -> int:
        """Width of the dense (or ColBERT) vectors before Matryoshka truncation: the last Dense
        module's where the checkpoint projects its pooled vectors."""
        stack = self.dense_stack(task)
        return stack[-1].out_features if stack else self.hidden_size

    def dense_stack(self, task: Task) -> tuple[DenseModule, ...]:
        """The sentence-transformers Dense modules applied to the vectors of `task`."""
        st = self.checkpoint.sentence_transformers
        return st.dense if st and task in DENSE_TASKS else ()

    def dense_layers(self, task: Task) -> list[Any]:
        """The Dense modules' torch Linears (loaded once)."""
        if not self.dense_stack(task):
            return []
        if self._dense_layers is None:
            from shoal.exporter.adapters.graph_modules import load_dense

            self._dense_layers = [load_dense(self.checkpoint, m) for m in self.dense_stack(task)]
        return self._dense_layers

    def projected(self, states: Any, plan: ExportPlan) -> Any:
        """The graph module `states` with the Dense modules folded in (per token)."""
        layers = self.dense_layers(plan.task)
        if not layers:
            return states
        from shoal.exporter.adapters.graph_modules import Projected

        return Projected(states, layers)

    def unexported_heads(self) -> list[str]:
        """The checkpoint's architectures whose head this family would drop."""
        return [
            architecture
            for architecture in self.checkpoint.architectures
            for suffix in HEAD_TASKS
            if architecture.endswith(suffix) and suffix not in self.heads
        ]

    def plan(self, options: ExportOptions) -> ExportPlan:
        dropped = self.unexported_heads()
        if dropped and not options.task:
            suffix = next(s for s in HEAD_TASKS if dropped[0].endswith(s))
            raise ExportError(
                f"{self.checkpoint.path / 'config.json'} names {dropped[0]}: a "
                f"{HEAD_TASKS[suffix]} head, which shoal does not export (family {self.name!r} "
                f"would export the backbone's {self.tasks[0].value} output and drop the head). "
                f"To export the backbone alone, ask for it: --task {self.tasks[0].value} (in a "
                f"catalog, task: {self.tasks[0].value})"
            )
        task = Task(options.task) if options.task else self.tasks[0]
        if task not in self.tasks:
            raise ExportError(
                f"family {self.name!r} exports tasks {[t.value for t in self.tasks]}, not "
                f"{task.value!r}"
            )
        st = self.checkpoint.sentence_transformers
        dense = task in DENSE_TASKS
        if not dense and (options.pooling or options.dims or options.matryoshka):
            raise ExportError(
                f"--pooling/--dims/--matryoshka apply to dense embeddings (tasks embed, multi), "
                f"not {task.value!r}"
            )
        prompt_options = (options.instruction, options.prompt_prefix, options.prompt_suffix)
        if any(o is not None for o in prompt_options) and not self.takes_prompt:
            raise ExportError(
                f"--instruction/--prompt-prefix/--prompt-suffix apply to LLM rerankers (a "
                f"*ForCausalLM checkpoint exported with --task rerank), not to family {self.name!r}"
            )
        if options.score != SCORE_RAW and task != Task.RERANK:
            raise ExportError(f"--score applies to rerankers (task rerank), not {task.value!r}")
        pooling = None
        if dense:
            pooling = Pooling(
                options.pooling or (st.pooling if st else None) or self.default_pooling
            )
        if options.aggregation and task != Task.EXTRACT:
            raise ExportError(f"--aggregation applies to task extract, not {task.value!r}")
        extract = task == Task.EXTRACT
        if extract and (options.query_prefix or options.document_prefix):
            raise ExportError(
                "--query-prefix/--document-prefix do not apply to task extract (entities are "
                "character offsets into the text as sent)"
            )
        normalize = options.normalize
        if normalize is None:
            normalize = (st.normalize if st else True) if dense else task == Task.COLBERT
        stack = self.dense_stack(task)
        if stack and pooling is Pooling.MAX:
            raise ExportError(
                f"{self.checkpoint.path}: max pooling followed by a Dense module cannot be "
                "exported (shoal folds Dense modules into the graph, before pooling)"
            )
        if stack and stack[0].in_features != self.hidden_size:
            raise ExportError(
                f"{self.checkpoint.path / stack[0].path}: in_features {stack[0].in_features} "
                f"is not the model's hidden size {self.hidden_size}"
            )
        width = self.output_width(task)
        if options.dims is not None and options.dims > width:
            raise ExportError(f"--dims {options.dims} exceeds the model's output width ({width})")

        prompts = st.prompts if st and not extract else {}
        query_prefix = options.query_prefix
        if query_prefix is None:
            query_prefix = prompts.get("query", "")
        document_prefix = options.document_prefix
        if document_prefix is None:
            document_prefix = prompts.get("document", prompts.get("passage", ""))

        max_length = options.max_length or self.default_max_length()
        try:
            tokenization = tokenization_config(
                self.checkpoint.path,
                max_length=max_length,
                padding_side=self.padding_side,
                token_type_ids=self.token_type_ids,
                pairs=task == Task.RERANK,
                token_info=extract,
                query_prefix=query_prefix,
                document_prefix=document_prefix,
                **self.tokenization_extra(),
            )
        except TokenizationError as exc:
            raise ExportError(str(exc)) from exc
        postprocessing: dict[str, Any] = {
            "pooling": pooling.value if pooling else None,
            "normalize": bool(normalize),
            "dims": options.dims,
            "special_token_ids": self.special_token_ids(),
        }
        if extract:
            postprocessing["aggregation"] = options.aggregation or Aggregation.SIMPLE.value
        if task == Task.RERANK:  # the first logit, as it is or through a sigmoid (0..1)
            postprocessing["score_activation"] = "sigmoid" if options.score == "sigmoid" else "none"
        postprocessing.update(self.postprocessing_extra(tokenization))
        return ExportPlan(
            family=self.name,
            task=task,
            pooling=pooling,
            normalize=bool(normalize),
            max_length=tokenization["max_length"],
            dims=options.dims,
            hidden_size=width,  # of the graph's per-token states (after any Dense module)
            prefixes={
                k: v for k, v in (("query", query_prefix), ("document", document_prefix)) if v
            },
            tokenization=tokenization,
            postprocessing=postprocessing,
            extra=self.manifest_extra(),
        )

    def default_max_length(self) -> int | None:
        st = self.checkpoint.sentence_transformers
        return st.max_seq_length if st and st.max_seq_length else None

    def tokenization_extra(self) -> dict[str, Any]:
        return {}

    def postprocessing_extra(self, tokenization: dict[str, Any]) -> dict[str, Any]:
        return {}

    def manifest_extra(self) -> dict[str, Any]:
        return {}

    def special_token_ids(self) -> list[int]:
        """Ids of the tokenizer's special tokens (never reported as sparse terms)."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.checkpoint.path / "tokenizer.json"))
        return sorted(int(i) for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)

    # ------------------------------------------------------------------ torch side

    def load(self) -> Any:
        """The Hugging Face model in eval mode, fp32, with the export attention implementation."""
        import torch
        import transformers

        auto = getattr(transformers, self.auto_class)
        try:
            model, info = auto.from_pretrained(
                str(self.checkpoint.path),
                attn_implementation=self.attention_implementation,
                dtype=torch.float32,
                output_loading_info=True,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ExportError(f"cannot load the weights of {self.checkpoint.path}: {exc}") from exc
        missing = [
            k for k in info.get("missing_keys", []) if not k.startswith(IGNORABLE_MISSING_PREFIXES)
        ]
        if missing:
            raise ExportError(
                f"{self.checkpoint.path} lacks weights {sorted(missing)[:5]}"
                f"{' ...' if len(missing) > 5 else ''} that {type(model).__name__} needs: is it "
                f"a {self.name} checkpoint? (pass --family to choose another adapter)"
            )
        return model.eval()

    def graph_outputs(self, task: Task) -> tuple[str, ...]:
        from shoal.postprocessing import GRAPH_OUTPUTS_BY_TASK

        return GRAPH_OUTPUTS_BY_TASK[task.value]

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        """A torch module: (input_ids, attention_mask[, token_type_ids]) -> graph outputs."""
        from shoal.exporter.adapters.graph_modules import HiddenStates

        return self.projected(HiddenStates(model, self.token_type_ids), plan)

    def graph_input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask"]
        if self.token_type_ids:
            names.append("token_type_ids")
        return names

    def reference_encoding(
        self, hf_tokenizer: Any, plan: ExportPlan, text: str, text_type: str, pair: str | None
    ) -> dict[str, Any]:
        """One probe text (and its pair) tokenized by the Hugging Face tokenizer for `reference`."""
        from shoal.exporter.parity import reference_encoding

        return reference_encoding(hf_tokenizer, plan, text, text_type, pair)

    def reference(
        self, model: Any, plan: ExportPlan, encoded: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """Contract outputs for ONE unpadded text, computed in torch independently of
        shoal.postprocessing (see shoal.exporter.reference)."""
        from shoal.exporter import reference

        inputs = {k: v for k, v in encoded.items() if k in self.graph_input_names()}
        hidden = model(**inputs).last_hidden_state[0]
        return reference.dense_outputs(hidden, plan, self.dense_layers(plan.task))

    def reference_texts(
        self, model: Any, hf_tokenizer: Any, plan: ExportPlan, texts: list[str]
    ) -> list[dict[str, Any]] | None:
        """Contract outputs computed from whole texts by the family's own library (token
        classification: transformers' pipeline), merged into `reference`'s; None: none."""
        return None
