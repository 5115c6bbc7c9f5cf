"""Tiny random Hugging Face checkpoints, one per architecture family shoal supports.

Each builder writes a complete local folder, as a hub download would look: config.json, safetensors
weights from a seeded random init, and a tokenizer trained right here by the `tokenizers` library on
a small built-in corpus (tokenizer.json + tokenizer_config.json + special_tokens_map.json), plus the
family's extra files (ColBERT `linear` weights, bge-m3 `colbert_linear.pt`/`sparse_linear.pt`,
sentence-transformers module files). Nothing is downloaded.

    from tests.support.tiny_models import build_tiny_model
    path = build_tiny_model("bert", tmp_path / "bert")

Tests use the session-scoped `tiny_model` factory fixture (tests/support/fixtures.py), which builds
each family once per session.

Families (the exporter's registry keys): bert, xlm-roberta, modernbert, qwen2, qwen3, reranker,
colbert, splade, bge-m3, token-classification (a NER head on BERT, or with
`backbone="xlm-roberta"` / `"deberta-v2"` on those), gliner (a `gliner` span model over a tiny
BERT; needs the `gliner` package), llm-reranker (a Qwen3ForCausalLM with the
Qwen3-Reranker prompt's words, "yes" and "no" in its vocabulary; export it with task rerank),
clip, siglip (tests/support/tiny_image_text.py).

Overrides: `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `intermediate_size`,
`max_position_embeddings`, `seed`, `vocab_size` (target tokenizer vocabulary), `colbert_dim`,
`backbone` (token-classification: "bert" | "xlm-roberta" | "deberta-v2"; llm-reranker: "qwen2"
for a Qwen2ForCausalLM, any other value a Qwen3ForCausalLM),
and `sentence_transformers_pooling` ("cls" | "mean" | "max" | "lasttoken": also write modules.json
and 1_Pooling/config.json as a sentence-transformers folder does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import tiny_image_text

# The corpus the tokenizers are trained on: varied words, punctuation, accents, CJK and emoji so
# that probe texts tokenize into real pieces instead of [UNK]s.
CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A shoal of small fish moves as one through the reef.",
    "Triton serves many small models on a few GPUs.",
    "Embeddings turn text into vectors; rerankers score query and document pairs.",
    "What is the capital of France? Paris is the capital of France.",
    "How do I bake bread at home with flour, water, salt and yeast?",
    "Late interaction models keep one vector per token.",
    "Sparse encoders weigh the words of the vocabulary that matter.",
    "Machine learning models are exported to ONNX and verified for parity.",
    "The operator places models on pools of GPUs and evicts the least recently used.",
    "Café, naïve, résumé, façade, jalapeño, über, Ångström, smörgåsbord.",
    "東京は日本の首都です。 北京是中国的首都。 서울은 한국의 수도입니다.",
    "Emoji test: 🐟🐠🐡 fish, 🚀 rocket, ✨ sparkles, 😀 smile.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2026 3.14159",
    "query: where do fish live? passage: fish live in water, rivers, lakes and seas.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query",
    "the of and to in is that for it as with was on be by at this are from or have an",
    "search document: shoal runs fleets of encoders on Triton inference server",
    "Αθήνα, Москва, القاهرة, नई दिल्ली, Ελληνικά and Русский text.",
    "Tokenizers split words into pieces: unbelievable -> un believ able.",
)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MODERNBERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

DEFAULTS: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "vocab_size": 400,
    "seed": 0,
    "colbert_dim": 16,
    # Wider than HF's default 0.02 so that different texts give clearly different vectors and
    # parity checks compare something other than near-identical outputs.
    "initializer_range": 0.1,
    "sentence_transformers_pooling": None,
    "backbone": "bert",
}


# ---------------------------------------------------------------- tokenizers


def _train_wordpiece(vocab_size: int, specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(
        CORPUS, WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def _train_unigram(
    vocab_size: int,
    specials: list[str] | None = None,
    unk: str = "<unk>",
    ends: tuple[str, str] = ("<s>", "</s>"),
) -> Any:
    """XLM-RoBERTa style (DeBERTa-v3 with its own specials): SentencePiece-like Unigram with the
    Metaspace pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        CORPUS,
        UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials or XLMR_SPECIALS, unk_token=unk
        ),
    )
    first, last = ends
    pair = f"{first} $A {last} $B {last}" if first == "[CLS]" else "<s> $A </s> </s> $B </s>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}",
        pair=pair,
        special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))],
    )
    return tok


def _train_byte_bpe(
    vocab_size: int,
    specials: list[str],
    template: tuple[str, str] | None,
    corpus: tuple[str, ...] = CORPUS,
) -> Any:
    """GPT-2/Qwen style byte-level BPE. `template` = (single, pair) post-processor templates."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if template is None:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        single, pair = template
        names = {t for t in (single + " " + pair).split() if t in specials}
        tok.post_processor = processors.TemplateProcessing(
            single=single,
            pair=pair,
            special_tokens=[(t, tok.token_to_id(t)) for t in sorted(names)],
        )
    return tok


def _save_tokenizer(
    tok: Any,
    out_dir: Path,
    *,
    tokenizer_class: str,
    special_tokens: dict[str, str],
    model_max_length: int,
    padding_side: str = "right",
    extra_config: dict[str, Any] | None = None,
) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json, as on the hub."""
    tok.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in dict.fromkeys(special_tokens.values())
    }
    config = {
        "tokenizer_class": tokenizer_class,
        "model_max_length": model_max_length,
        "padding_side": padding_side,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
        **special_tokens,
        **(extra_config or {}),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2) + "\n")


def _bert_tokenizer(out_dir: Path, o: dict[str, Any]) -> Any:
    tok = _train_wordpiece(o["vocab_size"], BERT_SPECIALS)
    _save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="BertTokenizer",
        special_tokens={
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
        model_max_length=o["max_position_embeddings"],
        extra_config={"do_lower_case": True},
    )
    return tok


def _xlmr_tokenizer(out_dir: Path, o: dict[str, Any]) -> Any:
    tok = _train_unigram(o["vocab_size"])
    _save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="XLMRobertaTokenizer",
        special_tokens={
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "cls_token": "<s>",
            "mask_token": "<mask>",
        },
        model_max_length=o["max_position_embeddings"],
    )
    return tok


def _deberta_tokenizer(out_dir: Path, o: dict[str, Any]) -> Any:
    tok = _train_unigram(o["vocab_size"], DEBERTA_SPECIALS, "[UNK]", ("[CLS]", "[SEP]"))
    roles = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
    tokens = ("[CLS]", "[SEP]", "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")
    _save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="DebertaV2Tokenizer",
        special_tokens={f"{role}_token": t for role, t in zip(roles, tokens, strict=True)},
        model_max_length=o["max_position_embeddings"],
    )
    return tok


# ---------------------------------------------------------------- models


def _common_config(o: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": o["hidden_size"],
        "num_hidden_layers": o["num_hidden_layers"],
        "num_attention_heads": o["num_attention_heads"],
        "intermediate_size": o["intermediate_size"],
        "max_position_embeddings": o["max_position_embeddings"],
        "initializer_range": o["initializer_range"],
    }


def _seeded(o: dict[str, Any]) -> None:
    import torch

    torch.manual_seed(o["seed"])


def _randomize_norms(model: Any, seed: int) -> None:
    """LayerNorm/RMSNorm weights start at exactly 1 and biases at 0; perturb them so that a bug
    that skips a norm's affine part would show in parity tests."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            lowered = name.lower()
            if "norm" in lowered and param.dim() == 1:
                noise = torch.randn(param.shape, generator=generator) * 0.1
                param.add_(noise)


def _save_model(model: Any, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)


def _bert_like(model_class_name: str, o: dict[str, Any], out_dir: Path, **config_extra: Any) -> Any:
    import transformers

    tok = _bert_tokenizer(out_dir, o)
    config = transformers.BertConfig(
        **_common_config(o, tok.get_vocab_size()),
        pad_token_id=tok.token_to_id("[PAD]"),
        type_vocab_size=2,
        **config_extra,
    )
    _seeded(o)
    model = getattr(transformers, model_class_name)(config).eval()
    _randomize_norms(model, o["seed"])
    _save_model(model, out_dir)
    return model


def _build_bert(out_dir: Path, o: dict[str, Any]) -> None:
    _bert_like("BertModel", o, out_dir)


def _build_reranker(out_dir: Path, o: dict[str, Any]) -> None:
    _bert_like("BertForSequenceClassification", o, out_dir, num_labels=1)


# A NER label set in the CoNLL style (B- begins an entity, I- continues it).
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def _sharpen_classifier(model: Any, seed: int) -> None:
    """Random init gives near-uniform label scores (every label ~1/n, argmax decided by tiny
    margins); larger classifier weights give varied, confident labels, so that the entities of
    the probe texts exercise grouping, B-/I- boundaries and the "O" filter."""
    import torch

    generator = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        weight = model.classifier.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)


def _ner_config() -> dict[str, Any]:
    return {
        "num_labels": len(NER_LABELS),
        "id2label": dict(enumerate(NER_LABELS)),
        "label2id": {label: i for i, label in enumerate(NER_LABELS)},
    }


def _build_token_classification(out_dir: Path, o: dict[str, Any]) -> None:
    if o["backbone"] == "xlm-roberta":
        model = _build_xlm_roberta(out_dir, o, "XLMRobertaForTokenClassification", **_ner_config())
    elif o["backbone"] == "deberta-v2":
        model = _build_deberta_v2(out_dir, o, "DebertaV2ForTokenClassification", **_ner_config())
    elif o["backbone"] == "bert":
        model = _bert_like("BertForTokenClassification", o, out_dir, **_ner_config())
    else:
        raise ValueError(f"backbone {o['backbone']!r}: use 'bert', 'xlm-roberta' or 'deberta-v2'")
    _sharpen_classifier(model, o["seed"])
    _save_model(model, out_dir)


def _build_splade(out_dir: Path, o: dict[str, Any]) -> None:
    _bert_like("BertForMaskedLM", o, out_dir)


def _build_colbert(out_dir: Path, o: dict[str, Any]) -> None:
    """colbert-ai's HF_ColBERT: a BertModel under `bert.` and a bias-free `linear` projection in
    the same state dict; [unused0]/[unused1] serve as the [Q]/[D] markers."""
    import torch
    from safetensors.torch import save_file

    model = _bert_like("BertModel", o, out_dir)
    generator = torch.Generator().manual_seed(o["seed"] + 2)
    linear = torch.randn(o["colbert_dim"], o["hidden_size"], generator=generator) * 0.2
    state = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["linear.weight"] = linear
    for stale in out_dir.glob("model*.safetensors*"):
        stale.unlink()
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out_dir / "config.json").read_text())
    config["architectures"] = ["HF_ColBERT"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_token": "[Q]",
        "doc_token": "[D]",
        "query_maxlen": 32,
        "doc_maxlen": 180,
        "dim": o["colbert_dim"],
        "similarity": "cosine",
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
    }
    (out_dir / "artifact.metadata").write_text(json.dumps(metadata, indent=2) + "\n")


def _build_xlm_roberta(
    out_dir: Path, o: dict[str, Any], model_class_name: str = "XLMRobertaModel", **extra: Any
) -> Any:
    import transformers

    tok = _xlmr_tokenizer(out_dir, o)
    pad = tok.token_to_id("<pad>")
    common = _common_config(o, tok.get_vocab_size())
    # RoBERTa positions start after padding_idx: the table has 2 more rows than usable positions.
    common["max_position_embeddings"] = o["max_position_embeddings"] + pad + 1
    config = transformers.XLMRobertaConfig(
        **common,
        pad_token_id=pad,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        type_vocab_size=1,
        **extra,
    )
    _seeded(o)
    model = getattr(transformers, model_class_name)(config).eval()
    _randomize_norms(model, o["seed"])
    _save_model(model, out_dir)
    return model


def _build_deberta_v2(out_dir: Path, o: dict[str, Any], model_class_name: str, **extra: Any) -> Any:
    """DeBERTa-v3 as on the hub: relative (disentangled) attention, no absolute positions, no
    token types."""
    import transformers

    tok = _deberta_tokenizer(out_dir, o)
    config = transformers.DebertaV2Config(
        **_common_config(o, tok.get_vocab_size()),
        pad_token_id=tok.token_to_id("[PAD]"),
        type_vocab_size=0,
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1,
        position_buckets=32,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        **extra,
    )
    _seeded(o)
    model = getattr(transformers, model_class_name)(config).eval()
    _randomize_norms(model, o["seed"])
    _save_model(model, out_dir)
    return model


def _build_bge_m3(out_dir: Path, o: dict[str, Any]) -> None:
    """BAAI/bge-m3 as FlagEmbedding ships it: an XLMRobertaModel folder plus colbert_linear.pt
    (Linear(hidden, hidden)) and sparse_linear.pt (Linear(hidden, 1)) state dicts, and
    sentence-transformers files with CLS pooling."""
    import torch

    _build_xlm_roberta(out_dir, o)
    hidden = o["hidden_size"]
    torch.manual_seed(o["seed"] + 3)
    colbert_linear = torch.nn.Linear(hidden, hidden)
    sparse_linear = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        sparse_linear.weight.mul_(3.0)  # enough positive weights to make sparse output non-empty
        sparse_linear.bias.fill_(0.05)
    torch.save(colbert_linear.state_dict(), out_dir / "colbert_linear.pt")
    torch.save(sparse_linear.state_dict(), out_dir / "sparse_linear.pt")
    _write_sentence_transformers(out_dir, "cls", hidden, normalize=True)


def _build_modernbert(out_dir: Path, o: dict[str, Any]) -> None:
    import transformers

    tok = _train_byte_bpe(
        o["vocab_size"],
        MODERNBERT_SPECIALS,
        ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]"),
    )
    _save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="PreTrainedTokenizerFast",
        special_tokens={
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
        model_max_length=o["max_position_embeddings"],
        extra_config={"model_input_names": ["input_ids", "attention_mask"]},
    )
    config = transformers.ModernBertConfig(
        **_common_config(o, tok.get_vocab_size()),
        pad_token_id=tok.token_to_id("[PAD]"),
        cls_token_id=tok.token_to_id("[CLS]"),
        sep_token_id=tok.token_to_id("[SEP]"),
        bos_token_id=tok.token_to_id("[CLS]"),
        eos_token_id=tok.token_to_id("[SEP]"),
        global_attn_every_n_layers=2,
        local_attention=16,  # < probe lengths, so the sliding-window path is exercised
    )
    _seeded(o)
    model = transformers.ModernBertModel(config).eval()
    _randomize_norms(model, o["seed"])
    _save_model(model, out_dir)


def _save_qwen_tokenizer(
    tok: Any, out_dir: Path, o: dict[str, Any], list_added_tokens: bool = False
) -> None:
    """Qwen's tokenizer files: <|endoftext|> pads, <|im_end|> ends, left padding.
    list_added_tokens: tokenizer_config.json lists every added token (<|im_start|>, <think>, ...)
    as Qwen's do; transformers 5 rebuilds a qwen2 checkpoint's tokenizer from that list and the
    vocabulary, and would split an unlisted <|im_start|> into characters."""
    extra: dict[str, Any] = {"model_input_names": ["input_ids", "attention_mask"]}
    if list_added_tokens:
        extra["added_tokens_decoder"] = {
            str(i): {
                "content": t.content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": t.special,
            }
            for i, t in sorted(tok.get_added_tokens_decoder().items())
        }
    _save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="PreTrainedTokenizerFast",
        special_tokens={"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
        model_max_length=o["max_position_embeddings"],
        padding_side="left",
        extra_config=extra,
    )


def _build_qwen(model_type: str, out_dir: Path, o: dict[str, Any]) -> None:
    """A Qwen3-Embedding style decoder embedder: byte-level BPE whose post-processor appends
    <|endoftext|> (the token whose state is the embedding), left padding, last-token pooling."""
    import transformers

    tok = _train_byte_bpe(
        o["vocab_size"],
        QWEN_SPECIALS,
        ("$A <|endoftext|>", "$A <|endoftext|> $B <|endoftext|>"),
    )
    _save_qwen_tokenizer(tok, out_dir, o)
    heads = o["num_attention_heads"]
    common = _common_config(o, tok.get_vocab_size())
    extra: dict[str, Any] = {
        "num_key_value_heads": max(1, heads // 2),
        "pad_token_id": tok.token_to_id("<|endoftext|>"),
        "eos_token_id": tok.token_to_id("<|im_end|>"),
        "bos_token_id": None,
        "tie_word_embeddings": True,
    }
    if model_type == "qwen3":
        extra["head_dim"] = o["hidden_size"] // heads
        config = transformers.Qwen3Config(**common, **extra)
        model = transformers.Qwen3Model
    else:
        config = transformers.Qwen2Config(**common, **extra)
        model = transformers.Qwen2Model
    _seeded(o)
    built = model(config).eval()
    _randomize_norms(built, o["seed"])
    _save_model(built, out_dir)
    _write_sentence_transformers(out_dir, "lasttoken", o["hidden_size"], normalize=True)
    prompts = {"query": "Instruct: Given a web search query, retrieve relevant passages\nQuery:"}
    st_config = json.loads((out_dir / "config_sentence_transformers.json").read_text())
    st_config.update({"prompts": prompts, "default_prompt_name": None})
    (out_dir / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))


# What a Qwen3-Reranker's tokenizer has seen: its prompt's words, and "yes"/"no" as whole tokens.
RERANKER_CORPUS: tuple[str, ...] = (
    *CORPUS,
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query",
    "<Query>: where do fish live?\n<Document>: fish live in water.",
    "system user assistant think yes no yes no yes no",
)


def _build_llm_reranker(out_dir: Path, o: dict[str, Any]) -> None:
    """A Qwen3-Reranker style checkpoint: Qwen3ForCausalLM with an untied LM head (so that an
    export reading the embeddings instead of lm_head fails parity), Qwen's specials and its
    <think> tokens, no tokens added by the post-processor, left padding."""
    import transformers
    from tokenizers import AddedToken

    tok = _train_byte_bpe(max(o["vocab_size"], 600), QWEN_SPECIALS, None, RERANKER_CORPUS)
    tok.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")]
    )
    for word in ("yes", "no"):
        if tok.token_to_id(word) is None:
            raise AssertionError(f"the tiny reranker tokenizer has no {word!r} token")
    _save_qwen_tokenizer(tok, out_dir, o, list_added_tokens=True)
    heads = o["num_attention_heads"]
    qwen2 = o["backbone"] == "qwen2"
    config = (transformers.Qwen2Config if qwen2 else transformers.Qwen3Config)(
        **_common_config(o, tok.get_vocab_size()),
        num_key_value_heads=max(1, heads // 2),
        **({} if qwen2 else {"head_dim": o["hidden_size"] // heads}),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    _seeded(o)
    causal_lm = transformers.Qwen2ForCausalLM if qwen2 else transformers.Qwen3ForCausalLM
    model = causal_lm(config).eval()
    _randomize_norms(model, o["seed"])
    _save_model(model, out_dir)


def _write_sentence_transformers(out_dir: Path, pooling: str, dims: int, normalize: bool) -> None:
    """modules.json + 1_Pooling/config.json (+ 2_Normalize) as a sentence-transformers folder."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (out_dir / "2_Normalize").mkdir(exist_ok=True)
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    pooling_dir = out_dir / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    modes = {
        "cls": "cls_token",
        "mean": "mean_tokens",
        "max": "max_tokens",
        "lasttoken": "lasttoken",
    }
    pooling_config = {
        "word_embedding_dimension": dims,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    pooling_config[f"pooling_mode_{modes[pooling]}"] = True
    (pooling_dir / "config.json").write_text(json.dumps(pooling_config, indent=2) + "\n")
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False}) + "\n"
    )
    (out_dir / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    )


def _build_gliner(out_dir: Path, o: dict[str, Any]) -> None:
    """A `gliner` span model (UniEncoderSpan: markerV0 spans, LSTM, labels in the prompt) over a
    tiny random BERT, saved by gliner's own save_pretrained (gliner_config.json, weights and the
    tokenizer with its <<ENT>>/<<SEP>> tokens). The encoder is built in a scratch folder that
    gliner reads once; the saved model does not need it."""
    import tempfile

    import torch
    from gliner import GLiNER, GLiNERConfig

    with tempfile.TemporaryDirectory() as scratch:
        encoder = Path(scratch) / "encoder"
        encoder.mkdir()
        _bert_like("BertModel", o, encoder)
        config = GLiNERConfig(
            model_name=str(encoder),
            max_width=4,
            hidden_size=o["hidden_size"],
            dropout=0.0,
            max_len=64,
            max_types=8,
        )
        _seeded(o)
        model = GLiNER.from_config(config, backbone_from_pretrained=True).eval()
        # Random heads score every span near 0.5; larger projections give spans clearly above
        # and below the threshold, so that parity compares real entity choices.
        generator = torch.Generator().manual_seed(o["seed"] + 5)
        with torch.no_grad():
            for name, param in model.model.named_parameters():
                if name.startswith(("span_rep_layer", "prompt_rep_layer")) and param.dim() == 2:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.12)
        model.save_pretrained(str(out_dir))


BUILDERS: dict[str, Callable[[Path, dict[str, Any]], None]] = {
    "bert": _build_bert,
    "xlm-roberta": _build_xlm_roberta,
    "modernbert": _build_modernbert,
    "qwen2": lambda out, o: _build_qwen("qwen2", out, o),
    "qwen3": lambda out, o: _build_qwen("qwen3", out, o),
    "reranker": _build_reranker,
    "colbert": _build_colbert,
    "splade": _build_splade,
    "bge-m3": _build_bge_m3,
    "token-classification": _build_token_classification,
    "gliner": _build_gliner,
    "clip": lambda out, o: tiny_image_text.build_clip(out, o),
    "siglip": lambda out, o: tiny_image_text.build_siglip(out, o),
    "llm-reranker": _build_llm_reranker,
}
FAMILIES: tuple[str, ...] = tuple(BUILDERS)
# ExportOptions fields a family's tiny checkpoint needs: a causal LM exports as an embedder unless
# asked for task rerank, and the reranker prompt's prefix and suffix take 77 tokens.
FAMILY_EXPORT_OPTIONS: dict[str, dict[str, Any]] = {
    "llm-reranker": {"task": "rerank", "max_length": 128},
}


def build_tiny_model(family: str, out_dir: Path, **overrides: Any) -> Path:
    """Write a tiny random checkpoint of `family` into `out_dir` (created) and return it."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    options = {**DEFAULTS, **overrides}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    BUILDERS[family](out_dir, options)
    st_pooling = options["sentence_transformers_pooling"]
    if st_pooling:
        _write_sentence_transformers(out_dir, st_pooling, options["hidden_size"], normalize=True)
    return out_dir


# ---------------------------------------------------------------- LoRA adapters (PEFT)


def build_tiny_lora_adapter(
    base: Path,
    out_dir: Path,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    target_modules: tuple[str, ...] = ("query", "value"),
    seed: int = 1,
    auto_class: str = "AutoModel",
) -> Path:
    """A PEFT LoRA adapter of the tiny checkpoint `base`, written by PEFT's save_pretrained
    (adapter_config.json + adapter_model.safetensors). PEFT starts lora_B at zero (no effect):
    both A and B are drawn at random here, large enough that the adapter visibly moves the
    model's outputs."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = getattr(transformers, auto_class).from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules))
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return out_dir
