"""The shared tiny checkpoints load offline with transformers, as a hub folder would."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from tests.support.tiny_models import FAMILIES, build_tiny_model

TEXTS = ["hello fish café 東京 🐟", "a", ""]


# A gliner folder is gliner's own layout (gliner_config.json, no config.json): tested below.
TRANSFORMERS_FAMILIES = [f for f in FAMILIES if f != "gliner"]


@pytest.mark.parametrize("family", TRANSFORMERS_FAMILIES)
def test_every_family_loads_offline_with_its_auto_classes(family, tiny_model):
    transformers = pytest.importorskip("transformers")
    folder = tiny_model(family)
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (folder / name).is_file(), name
    assert list(folder.glob("*.safetensors"))

    auto = transformers.AutoTokenizer.from_pretrained(folder)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TEXTS:
        assert auto(text)["input_ids"] == raw.encode(text).ids
    assert raw.encode("hello fish").tokens.count(raw.id_to_token(0)) <= 1  # not all [UNK]s
    config = transformers.AutoConfig.from_pretrained(folder)
    text_config = getattr(config, "text_config", config)  # image-text models: the text tower
    assert text_config.num_hidden_layers == 2
    assert text_config.vocab_size >= raw.get_vocab_size()


def test_the_tiny_gliner_loads_offline_with_gliner_and_finds_spans(tiny_model):
    gliner = pytest.importorskip("gliner")
    folder = tiny_model("gliner")
    assert {p.name for p in folder.iterdir()} >= {"gliner_config.json", "tokenizer.json"}
    model = gliner.GLiNER.from_pretrained(str(folder), local_files_only=True)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert raw.token_to_id("<<ENT>>") is not None and raw.token_to_id("<<SEP>>") is not None
    entities = model.predict_entities("Paris is the capital of France.", ["city", "person"])
    assert entities and {e["label"] for e in entities} <= {"city", "person"}
    assert len({round(e["score"], 3) for e in entities}) > 1  # varied scores, not one constant


def test_family_extras_are_written(tiny_model):
    colbert = tiny_model("colbert")
    assert json.loads((colbert / "config.json").read_text())["architectures"] == ["HF_ColBERT"]
    assert json.loads((colbert / "artifact.metadata").read_text())["query_token_id"] == "[unused0]"
    bge = tiny_model("bge-m3")
    assert (bge / "colbert_linear.pt").is_file() and (bge / "sparse_linear.pt").is_file()
    assert json.loads((bge / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"]
    qwen = tiny_model("qwen3")
    assert json.loads((qwen / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_unknown_family_and_override_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="known: bert"):
        build_tiny_model("gpt-17", tmp_path)
    with pytest.raises(ValueError, match="unknown overrides"):
        build_tiny_model("bert", tmp_path, hidden=3)
