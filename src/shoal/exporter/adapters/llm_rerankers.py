"""LLM rerankers (Qwen3-Reranker style): a decoder language model asked whether a document meets a
query, scored from the next-token logits of "yes" and "no" at the last position.

Detection: such checkpoints are plain `*ForCausalLM` (Qwen3-Reranker's config.json names
Qwen3ForCausalLM, exactly as decoder embedders such as Qwen3-Embedding do), so nothing in the files
tells them apart. A causal LM is exported as an embedder by default and as this family when the
user asks for `--task rerank`: the family ranks below the decoder embedders, and `detect_adapter`
passes over families that do not export the asked-for task.

The prompt is the model card's: a system turn asking for "yes" or "no", the user turn
`<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}`, and the assistant turn
opened with an empty think block. Where a checkpoint was trained otherwise, the instruction
(`--instruction`) and the text before and after the user turn's content (`--prompt-prefix`,
`--prompt-suffix`) are export options; the manifest records what was used.

The exported graph computes what the score needs only: the last position's hidden state times the
two LM-head rows (yes, no), giving one logit per pair, logit(yes) - logit(no). With `--score
sigmoid` the postprocess step turns it into softmax([no, yes])[yes], the model card's score."""

from __future__ import annotations

from typing import Any, ClassVar

from shoal.contract import OUTPUT_SCORE, Task
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import register
from shoal.exporter.errors import ExportError
from shoal.exporter.options import ExportOptions, ExportPlan

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_RERANKER_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_RERANKER_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@register
class LlmRerankerAdapter(Adapter):
    name = "llm-reranker"
    model_types = ("qwen2", "qwen3")
    tasks = (Task.RERANK,)
    default_pooling = None
    padding_side = "left"  # every row's last token at T-1: the graph reads that position
    detection_priority = -10  # below the decoder embedders: only `--task rerank` picks it
    auto_class = "AutoModelForCausalLM"
    heads = ("ForCausalLM",)
    takes_prompt = True
    # fp32: the yes-probability within 1e-5 of the model card's (base bar: 1e-4)
    parity_score_limits: ClassVar[dict[str, float]] = {"fp32": 1e-5}
    answers: ClassVar[tuple[str, str]] = ("yes", "no")  # (relevant, not relevant) tokens
    # the export's (`plan` sets them from the options)
    instruction = DEFAULT_INSTRUCTION
    prefix = QWEN3_RERANKER_PREFIX
    suffix = QWEN3_RERANKER_SUFFIX

    @classmethod
    def matches(cls, checkpoint: Any) -> bool:
        return checkpoint.model_type in cls.model_types and any(
            a.endswith("ForCausalLM") for a in checkpoint.architectures
        )

    def plan(self, options: ExportOptions) -> ExportPlan:
        self.instruction = options.instruction or DEFAULT_INSTRUCTION
        if options.prompt_prefix is not None:
            self.prefix = options.prompt_prefix
        if options.prompt_suffix is not None:
            self.suffix = options.prompt_suffix
        return super().plan(options)

    def template(self) -> str:
        return f"<Instruct>: {self.instruction}\n<Query>: {{query}}\n<Document>: {{document}}"

    def tokenization_extra(self) -> dict[str, Any]:
        return {"prompt": (self.prefix, self.template(), self.suffix)}

    def answer_ids(self) -> tuple[int, int]:
        """Token ids of "yes" and "no": each must be one token of the vocabulary."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.checkpoint.path / "tokenizer.json"))
        ids = []
        for answer in self.answers:
            found = tokenizer.token_to_id(answer)
            if found is None:
                raise ExportError(
                    f"{self.checkpoint.path / 'tokenizer.json'} has no {answer!r} token: an LLM "
                    f"reranker is scored from the logits of the tokens {list(self.answers)}; is "
                    "this a Qwen3-Reranker style checkpoint? (for an embedder, drop --task rerank)"
                )
            ids.append(int(found))
        return ids[0], ids[1]

    def manifest_extra(self) -> dict[str, Any]:
        yes, no = self.answer_ids()
        # the prefix and suffix are in extra.tokenization.prompt, with the filled template
        return {"instruction": self.instruction, "yes_token_id": yes, "no_token_id": no}

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import YesNoLogit

        return YesNoLogit(model, *self.answer_ids())

    def reference_encoding(
        self, hf_tokenizer: Any, plan: ExportPlan, text: str, text_type: str, pair: str | None
    ) -> dict[str, Any]:
        """As the model card's `process_inputs`: prefix and suffix tokenized without special
        tokens, the filled template truncated ('longest_first') to what is left of max_length."""
        import torch

        from shoal.tokenization import fill_prompt

        prompt = plan.tokenization["prompt"]
        prefix = hf_tokenizer.encode(prompt["prefix"], add_special_tokens=False)
        suffix = hf_tokenizer.encode(prompt["suffix"], add_special_tokens=False)
        body = fill_prompt(
            prompt["template"],
            query=plan.prefixes.get("query", "") + text,
            document=plan.prefixes.get("document", "") + (pair or ""),
        )
        room = plan.max_length - len(prefix) - len(suffix)
        ids = hf_tokenizer([body], truncation="longest_first", max_length=room)["input_ids"][0]
        ids = [*prefix, *ids, *suffix]
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "attention_mask": torch.ones((1, len(ids)), dtype=torch.long),
        }

    def reference(self, model: Any, plan: ExportPlan, encoded: dict[str, Any]) -> dict[str, Any]:
        """The model's full forward (every vocabulary logit, its own LM head), then the model
        card's `compute_logits` (sigmoid) or the logit difference (raw)."""
        import torch

        yes, no = self.answer_ids()
        logits = model(**encoded).logits[0, -1]
        if plan.postprocessing.get("score_activation") == "sigmoid":
            pair = torch.stack([logits[no], logits[yes]])
            score = torch.nn.functional.log_softmax(pair, dim=0)[1].exp()
        else:
            score = logits[yes] - logits[no]
        return {OUTPUT_SCORE: score.reshape(1).detach().double().numpy()}
