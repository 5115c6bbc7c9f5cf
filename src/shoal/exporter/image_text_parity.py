"""Parity of an image-text export (CLIP, SigLIP): each tower's exported path against transformers.

Text: shoal.tokenization -> the text graph on onnxruntime -> shoal.postprocessing, on batch 1 and
a padded batch (the probe texts of shoal.exporter.parity, one longer than max_length), against the
Hugging Face tokenizer -> `get_text_features`, one text at a time, L2-normalized.

Image: probe images made here with Pillow (sizes from 7x5 to 640x480, landscape and portrait, RGB,
RGBA, grayscale and palette, as PNG, JPEG and WebP files) -> shoal.image_preprocessing (from the
file bytes, as the Triton step) -> the vision graph -> shoal.postprocessing, against transformers'
own Pillow image processor for the checkpoint -> `get_image_features`, one image at a time. The
pixel values are compared too ("pixel_values": cosine per image), so a preprocessing difference is
named as such rather than showing up as a lower embedding cosine.

Metrics are the manifest's ParityResult, output "EMBEDDING" (min cosine over every probe) and
"pixel_values"; thresholds are shoal.exporter.parity's per dtype.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.contract import OUTPUT_EMBEDDING
from shoal.exporter.options import ExportPlan
from shoal.exporter.parity import (
    MIN_COSINE,
    PROBE_TEXTS,
    THRESHOLDS,
    _cosine,
    long_text,
    onnx_session,
)
from shoal.image_preprocessing import preprocess
from shoal.manifest import ParityResult
from shoal.postprocessing import postprocess
from shoal.tokenization import TextEncoder

PIXEL_VALUES = "pixel_values"


@dataclass(frozen=True)
class ProbeImage:
    label: str
    data: bytes  # the file, as a client sends it


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    """Gradients plus noise: structure that resizing and cropping visibly change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x + y) % 256]
    base = np.stack(channels, axis=-1).astype(np.int32)
    noise = rng.integers(-40, 41, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _encode(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def probe_images() -> list[ProbeImage]:
    from PIL import Image

    rgb = Image.fromarray(_pattern(97, 61, 1))
    portrait = Image.fromarray(_pattern(40, 130, 2)).convert("RGBA")
    portrait.putalpha(Image.fromarray((_pattern(40, 130, 3)[..., 0] // 2 + 64).astype(np.uint8)))
    gray = Image.fromarray(_pattern(50, 50, 4)).convert("L")
    palette = Image.fromarray(_pattern(33, 21, 5)).convert("P", palette=Image.Palette.ADAPTIVE)
    tiny = Image.fromarray(_pattern(7, 5, 6))
    large = Image.fromarray(_pattern(640, 480, 7))
    return [
        ProbeImage("rgb-97x61.png", _encode(rgb, "PNG")),
        ProbeImage("rgba-40x130.png", _encode(portrait, "PNG")),
        ProbeImage("gray-50x50.jpg", _encode(gray, "JPEG", quality=90)),
        ProbeImage("palette-33x21.png", _encode(palette, "PNG", transparency=0)),
        ProbeImage("tiny-7x5.webp", _encode(tiny, "WEBP", lossless=True)),
        ProbeImage("photo-640x480.jpg", _encode(large, "JPEG", quality=90)),
        ProbeImage("lossy-97x61.webp", _encode(rgb, "WEBP", quality=80)),
    ]


def probe_texts(plan: ExportPlan) -> list[str]:
    return [*PROBE_TEXTS, long_text(plan.max_length)]


# ------------------------------------------------------------------ exported paths


def _embeddings(session: Any, feed: dict[str, np.ndarray], config: dict[str, Any]) -> np.ndarray:
    names = [o.name for o in session.get_outputs()]
    graph = {n: v.astype(np.float32) for n, v in zip(names, session.run(names, feed), strict=True)}
    return postprocess("image-text", graph, None, None, config)[OUTPUT_EMBEDDING]


def text_embeddings(
    session: Any, encoder: TextEncoder, plan: ExportPlan, texts: list[str]
) -> np.ndarray:
    tokens = encoder.encode(texts)
    feed = {i.name: tokens[i.name] for i in session.get_inputs()}
    return _embeddings(session, feed, plan.postprocessing)


def image_pixels(plan: ExportPlan, images: list[ProbeImage]) -> np.ndarray:
    settings = plan.extra["image_preprocessing"]
    return preprocess([i.data for i in images], settings, max_pixels=1 << 40)


def image_embeddings(session: Any, plan: ExportPlan, pixels: np.ndarray) -> np.ndarray:
    feed = {session.get_inputs()[0].name: pixels}
    return _embeddings(session, feed, plan.postprocessing)


# ------------------------------------------------------------------ comparison


def _result(dtype: str, output: str, details: dict[str, float]) -> ParityResult:
    limit = THRESHOLDS[dtype].min_cosine
    value = min(details.values())
    return ParityResult(
        dtype=dtype,
        metric=MIN_COSINE,
        value=value,
        threshold=limit,
        passed=bool(value >= limit),
        details={probe: round(figure, 9) for probe, figure in details.items()},
        output=output,
    )


def check_text_parity(
    adapter: Any,
    model: Any,
    hf_tokenizer: Any,
    plan: ExportPlan,
    onnx_path: Path,
    encoder: TextEncoder,
    dtype: str,
) -> list[ParityResult]:
    session = onnx_session(onnx_path)
    texts = probe_texts(plan)
    wants = [adapter.reference_text(model, hf_tokenizer, plan, t) for t in texts]
    details = {}
    for label, batch in (("batch1", texts[:1]), ("padded", texts)):
        got = text_embeddings(session, encoder, plan, batch)
        for row, want in enumerate(wants[: len(batch)]):
            details[f"{label}/{row}"] = _cosine(got[row], want)
    return [_result(dtype, OUTPUT_EMBEDDING, details)]


def check_image_parity(
    adapter: Any, model: Any, plan: ExportPlan, onnx_path: Path, dtype: str
) -> list[ParityResult]:
    from PIL import Image

    session = onnx_session(onnx_path)
    images = probe_images()
    processor = adapter.image_processor()
    references = [
        adapter.reference_image(model, processor, Image.open(io.BytesIO(i.data))) for i in images
    ]
    pixels = image_pixels(plan, images)
    pixel_details = {
        image.label: _cosine(pixels[row], reference[1])
        for row, (image, reference) in enumerate(zip(images, references, strict=True))
    }
    details = {}
    for label, count in (("batch1", 1), ("batched", len(images))):
        got = image_embeddings(session, plan, pixels[:count])
        for row in range(count):
            details[f"{label}/{images[row].label}"] = _cosine(got[row], references[row][0])
    return [_result(dtype, PIXEL_VALUES, pixel_details), _result(dtype, OUTPUT_EMBEDDING, details)]
