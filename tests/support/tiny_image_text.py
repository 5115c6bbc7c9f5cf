"""Tiny random image-text checkpoints (CLIP, SigLIP) for tests/support/tiny_models.py: config.json
with both towers, seeded random weights, a tokenizer trained here, and a preprocessor_config.json
as the hub's (CLIP: shortest-edge bicubic resize + center crop, OpenAI mean/std; SigLIP: fixed-size
bilinear resize, mean/std 0.5). Nothing is downloaded.

Sizes: 32x32 images in 8x8 patches (16 patches), 32-wide towers (CLIP projects both to 16 dims; SigLIP's space is
its 32-wide vision output); text
positions: 64 (SigLIP pads every text to its max length), so the probe set's long text is
truncated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IMAGE_SIZE = 32
PATCH_SIZE = 8
PROJECTION_DIM = 16
CLIP_TEXT_POSITIONS = 64
SIGLIP_TEXT_POSITIONS = 64
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _tower(o: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": o["hidden_size"],
        "intermediate_size": o["intermediate_size"],
        "num_hidden_layers": o["num_hidden_layers"],
        "num_attention_heads": o["num_attention_heads"],
        **extra,
    }


def _vision(o: dict[str, Any]) -> dict[str, Any]:
    return _tower(o, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3)


def _write_preprocessor(out_dir: Path, config: dict[str, Any]) -> None:
    (out_dir / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _save(model: Any, out_dir: Path, o: dict[str, Any]) -> None:
    from tests.support.tiny_models import _randomize_norms, _save_model

    _randomize_norms(model, o["seed"])
    _save_model(model, out_dir)


def build_clip(out_dir: Path, o: dict[str, Any]) -> None:
    """CLIPModel; byte-level BPE wrapped in <|startoftext|> ... <|endoftext|>, padded with
    <|endoftext|> as OpenAI's CLIP (the text tower pools the first <|endoftext|>)."""
    import transformers

    from tests.support.tiny_models import _save_tokenizer, _seeded, _train_byte_bpe

    start, end = "<|startoftext|>", "<|endoftext|>"
    tok = _train_byte_bpe(
        o["vocab_size"], [start, end], (f"{start} $A {end}", f"{start} $A {end} $B {end}")
    )
    _save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="PreTrainedTokenizerFast",
        special_tokens={"bos_token": start, "eos_token": end, "pad_token": end, "unk_token": end},
        model_max_length=CLIP_TEXT_POSITIONS,
    )
    ids = {"bos_token_id": tok.token_to_id(start), "eos_token_id": tok.token_to_id(end)}
    config = transformers.CLIPConfig(
        text_config=_tower(
            o,
            vocab_size=tok.get_vocab_size(),
            max_position_embeddings=CLIP_TEXT_POSITIONS,
            pad_token_id=ids["eos_token_id"],
            **ids,
        ),
        vision_config=_vision(o),
        projection_dim=PROJECTION_DIM,
        initializer_factor=1.0,
    )
    _seeded(o)
    _save(transformers.CLIPModel(config).eval(), out_dir, o)
    _write_preprocessor(
        out_dir,
        {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": IMAGE_SIZE},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": OPENAI_CLIP_MEAN,
            "image_std": OPENAI_CLIP_STD,
            "do_convert_rgb": True,
        },
    )


def build_siglip(out_dir: Path, o: dict[str, Any]) -> None:
    """SiglipModel; a SentencePiece-like Unigram tokenizer that appends </s> and pads with <pad>
    (SigLIP texts are padded to the full length and pooled at the last position)."""
    import transformers
    from tokenizers import processors

    from tests.support.tiny_models import _save_tokenizer, _seeded, _train_unigram

    tok = _train_unigram(o["vocab_size"], ["<pad>", "</s>", "<unk>", "<s>"], "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    _save_tokenizer(
        tok,
        out_dir,
        tokenizer_class="PreTrainedTokenizerFast",
        special_tokens={"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
        model_max_length=SIGLIP_TEXT_POSITIONS,
        extra_config={"model_input_names": ["input_ids"]},
    )
    config = transformers.SiglipConfig(
        text_config=_tower(
            o,
            vocab_size=tok.get_vocab_size(),
            max_position_embeddings=SIGLIP_TEXT_POSITIONS,
            pad_token_id=tok.token_to_id("<pad>"),
            eos_token_id=tok.token_to_id("</s>"),
        ),
        vision_config=_vision(o),
    )
    _seeded(o)
    _save(transformers.SiglipModel(config).eval(), out_dir, o)
    _write_preprocessor(
        out_dir,
        {
            "image_processor_type": "SiglipImageProcessor",
            "do_resize": True,
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    )
