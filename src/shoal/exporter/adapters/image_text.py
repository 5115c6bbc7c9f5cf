"""Image-text embedders (CLIP, SigLIP): two towers, each with its projection, into one space.

One export writes two entries (shoal.exporter.image_text_export): `<name>` embeds TEXT with the
text tower, `<name>-image` embeds IMAGE with the vision tower. Each graph computes what
transformers' `get_text_features` / `get_image_features` return (pooled, projected); the
postprocess step L2-normalizes it. The image entry's first step decodes and preprocesses image
files as the checkpoint's `preprocessor_config.json` says (shoal.image_preprocessing).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from shoal.contract import Task
from shoal.exporter.adapters.base import Adapter
from shoal.exporter.adapters.registry import register
from shoal.exporter.errors import ExportError
from shoal.exporter.options import SCORE_RAW, ExportOptions, ExportPlan
from shoal.image_preprocessing import preprocessing_settings
from shoal.tokenization import TokenizationError, tokenization_config

PREPROCESSOR_CONFIG = "preprocessor_config.json"
PIXEL_VALUES = "pixel_values"


class ImageTextAdapter(Adapter):
    tasks = (Task.IMAGE_TEXT,)
    default_pooling = None
    heads = ()
    # SigLIP's text tower pools the last position of texts padded to its full length, without
    # an attention mask (as it was trained); CLIP's pools the first end-of-text token, masked.
    pad_text_to_max_length: ClassVar[bool] = False
    text_takes_mask: ClassVar[bool] = True
    pil_processor_class: ClassVar[str] = ""  # transformers' Pillow image processor (reference)
    # That processor's class defaults, for keys a preprocessor_config.json leaves out.
    image_defaults: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------ planning

    def tower_config(self, tower: str) -> dict[str, Any]:
        config = self.checkpoint.config.get(f"{tower}_config")
        if not isinstance(config, dict):
            raise ExportError(f"{self.checkpoint.path / 'config.json'} has no {tower}_config")
        return config

    @property
    def hidden_size(self) -> int:
        """The shared space's width: both towers project into it."""
        config = self.checkpoint.config
        width = config.get("projection_dim") or self.tower_config("text").get("projection_size")
        return int(width or self.tower_config("text")["hidden_size"])

    def output_width(self, task: Task) -> int:
        return self.hidden_size

    def plan(self, options: ExportOptions) -> ExportPlan:
        if options.task and options.task != Task.IMAGE_TEXT.value:
            raise ExportError(
                f"family {self.name!r} exports task image-text (text and image towers), not "
                f"{options.task!r}"
            )
        unused = [
            flag
            for flag, given in (
                ("--pooling", options.pooling),
                ("--dims", options.dims),
                ("--matryoshka", options.matryoshka),
                ("--aggregation", options.aggregation),
                ("--score", options.score != SCORE_RAW),
                ("--query-prefix", options.query_prefix),
                ("--document-prefix", options.document_prefix),
                ("--no-normalize", options.normalize is False),
                ("--adapter", options.adapters),
            )
            if given
        ]
        if unused:
            raise ExportError(
                f"{', '.join(unused)} do not apply to image-text models: both towers give "
                "normalized vectors of the shared space, as the model was trained"
            )
        limit = int(self.tower_config("text").get("max_position_embeddings") or 77)
        max_length = options.max_length or limit
        if max_length > limit:
            raise ExportError(f"--max-length {max_length} exceeds the text tower's {limit}")
        try:
            tokenization = tokenization_config(
                self.checkpoint.path,
                max_length=max_length,
                padding_side="right",
                pad_to_max_length=self.pad_text_to_max_length,
            )
        except TokenizationError as exc:
            raise ExportError(str(exc)) from exc
        image = self.image_settings()
        return ExportPlan(
            family=self.name,
            task=Task.IMAGE_TEXT,
            pooling=None,
            normalize=True,
            max_length=tokenization["max_length"],
            dims=None,
            hidden_size=self.hidden_size,
            prefixes={},
            tokenization=tokenization,
            postprocessing={"normalize": True, "dims": None},
            extra={"image_preprocessing": image},
        )

    def preprocessor_config(self) -> dict[str, Any]:
        path = self.checkpoint.path / PREPROCESSOR_CONFIG
        if not path.is_file():
            raise ExportError(
                f"{path} not found: an image-text export needs the checkpoint's image processor "
                "settings (save them with AutoImageProcessor.from_pretrained(...)"
                ".save_pretrained(...))"
            )
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"{path} cannot be read as JSON: {exc}") from exc

    def image_settings(self) -> dict[str, Any]:
        """shoal.image_preprocessing settings; the vision tower's image size must match."""
        path = self.checkpoint.path / PREPROCESSOR_CONFIG
        try:
            settings = preprocessing_settings(self.preprocessor_config(), self.image_defaults)
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{path}: cannot follow its image settings: {exc}") from exc
        size = int(self.tower_config("vision").get("image_size", 224))
        if (settings["height"], settings["width"]) != (size, size):
            raise ExportError(
                f"{path} makes {settings['height']}x{settings['width']} images but the vision "
                f"tower of {self.checkpoint.path / 'config.json'} takes {size}x{size}"
            )
        return settings

    def vision_tokens(self) -> int:
        """Sequence length of the vision tower: one token per patch (+ CLIP's class token)."""
        vision = self.tower_config("vision")
        patches = (int(vision.get("image_size", 224)) // int(vision.get("patch_size", 16))) ** 2
        return patches + (1 if self.model_types[0] == "clip" else 0)

    # ------------------------------------------------------------------ torch side

    def graph_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] if self.text_takes_mask else ["input_ids"]

    def graph_module(self, model: Any, plan: ExportPlan) -> Any:
        from shoal.exporter.adapters.graph_modules import TextTower

        return TextTower(model, self.text_takes_mask)

    def image_module(self, model: Any) -> Any:
        from shoal.exporter.adapters.graph_modules import ImageTower

        return ImageTower(model)

    def image_processor(self) -> Any:
        """transformers' own Pillow image processor for this checkpoint (the parity reference)."""
        import transformers

        config = {
            k: v for k, v in self.preprocessor_config().items() if k != "image_processor_type"
        }
        processor = getattr(transformers, self.pil_processor_class)
        return processor(**config)

    def reference_text(self, model: Any, hf_tokenizer: Any, plan: ExportPlan, text: str) -> Any:
        """transformers: the tokenizer, then get_text_features, L2-normalized."""
        import torch

        encoded = hf_tokenizer(
            [text],
            truncation=True,
            max_length=plan.max_length,
            padding="max_length" if self.pad_text_to_max_length else False,
            return_tensors="pt",
        )
        inputs = {"input_ids": encoded["input_ids"]}
        if self.text_takes_mask:
            inputs["attention_mask"] = encoded["attention_mask"]
        with torch.inference_mode():
            features = model.get_text_features(**inputs).pooler_output[0]
        return _normalized(features.numpy())

    def reference_image(self, model: Any, processor: Any, image: Any) -> tuple[Any, Any]:
        """transformers: the image processor, then get_image_features, L2-normalized; with the
        processor's pixel values."""
        import torch

        pixels = processor([image], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            features = model.get_image_features(pixel_values=pixels).pooler_output[0]
        return _normalized(features.numpy()), pixels[0].numpy()


def _normalized(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@register
class ClipAdapter(ImageTextAdapter):
    name = "clip"
    model_types = ("clip",)
    pil_processor_class = "CLIPImageProcessorPil"
    image_defaults = {
        "size": {"shortest_edge": 224},
        "resample": 3,  # bicubic
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],  # OpenAI's
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }


@register
class SiglipAdapter(ImageTextAdapter):
    name = "siglip"
    model_types = ("siglip",)
    pad_text_to_max_length = True
    text_takes_mask = False
    pil_processor_class = "SiglipImageProcessorPil"
    image_defaults = {
        "size": {"height": 224, "width": 224},
        "resample": 3,  # bicubic
        "do_center_crop": False,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
