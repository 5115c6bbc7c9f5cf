"""What a person chooses when exporting (`ExportOptions`), and the plan it resolves to with the
adapter's defaults and the checkpoint's own settings (`ExportPlan`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shoal.contract import Aggregation, Dtype, Pooling, Runtime, Task, adapter_name_problem
from shoal.exporter.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_OPSET
from shoal.model_repository.entry import EntryOptions

SCORE_RAW = "raw"
SCORES = (SCORE_RAW, "sigmoid")  # what a reranker's SCORE is: its first logit, or sigmoid of it


@dataclass(frozen=True)
class ExportOptions:
    """Unset (None) fields take the adapter's or the checkpoint's default."""

    task: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    dims: int | None = None  # Matryoshka truncation of dense outputs
    # Trained with a Matryoshka loss: clients may ask for fewer dims (the router's OpenAI
    # `dimensions`); implied by `dims`.
    matryoshka: bool = False
    score: str = SCORE_RAW  # rerankers: the raw first logit, or "sigmoid" of it (0..1)
    dtype: str = Dtype.FP32.value
    opset: int = DEFAULT_OPSET
    runtime: str = Runtime.PORTABLE.value
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    query_prefix: str | None = None
    document_prefix: str | None = None
    # extract: how token predictions join into entities (transformers' pipeline strategies)
    aggregation: str | None = None
    # LLM rerankers: the prompt's <Instruct> line, and the text before / after the
    # <Instruct>...<Document> part (system turn; assistant turn); None: Qwen3-Reranker's
    instruction: str | None = None
    prompt_prefix: str | None = None
    prompt_suffix: str | None = None
    family: str | None = None  # force an adapter instead of detecting it
    overwrite: bool = False  # replace an existing entry of the same name (atomically)
    version: int | None = None  # Triton version to write; None: one past the entry's current
    optimize: bool = True  # onnxruntime transformer optimizer (fused attention)
    entry: EntryOptions = field(default_factory=EntryOptions)
    # PEFT LoRA adapters exported with the base graph: (name, adapter folder) pairs (docs/lora.md)
    adapters: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        def check(value: Any, enum: type, what: str) -> None:
            if value is not None and value not in {e.value for e in enum}:
                choices = ", ".join(e.value for e in enum)
                raise ValueError(f"{what} {value!r} is not one of: {choices}")

        check(self.task, Task, "task")
        check(self.pooling, Pooling, "pooling")
        check(self.dtype, Dtype, "dtype")
        check(self.runtime, Runtime, "runtime")
        check(self.aggregation, Aggregation, "aggregation")
        if self.score not in SCORES:
            raise ValueError(f"score {self.score!r} is not one of: {', '.join(SCORES)}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.dims is not None and self.dims < 1:
            raise ValueError(f"dims must be >= 1, got {self.dims}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 14 <= self.opset <= 21:
            raise ValueError(f"opset {self.opset} is outside the supported 14..21")
        self._check_adapters()

    def _check_adapters(self) -> None:
        names = [name for name, _ in self.adapters]
        for name in names:
            problem = adapter_name_problem(name)
            if problem:
                raise ValueError(problem)
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"adapter {repeated[0]!r} is given twice; give each adapter once")
        if not self.adapters:
            return
        if self.dtype != Dtype.FP32.value:
            raise ValueError(
                f"LoRA adapters are exported at fp32 only, not --dtype {self.dtype} (the fp16 "
                "and int8 conversions would rewrite the adapters' slots): drop --dtype"
            )
        if self.runtime != Runtime.PORTABLE.value:
            raise ValueError(
                "LoRA adapters need --runtime portable: Triton's onnxruntime backend cannot "
                "activate an onnxruntime adapter per request"
            )

    def hashed_dict(self) -> dict[str, Any]:
        """The options that change the exported files (for the source hash)."""
        data = asdict(self)
        for key in ("overwrite", "version"):  # where and as which version, not what
            data.pop(key)
        data["entry"] = {k: str(v) for k, v in data["entry"].items()}
        return data


@dataclass
class ExportPlan:
    """Every setting of one export, resolved; recorded in the manifest."""

    family: str
    task: Task
    pooling: Pooling | None
    normalize: bool
    max_length: int
    dims: int | None
    hidden_size: int
    prefixes: dict[str, str]
    tokenization: dict[str, Any]  # shoal.tokenization settings
    postprocessing: dict[str, Any]  # shoal.postprocessing settings
    extra: dict[str, Any] = field(default_factory=dict)  # family facts for the manifest
