"""Image file bytes -> the pixel values a CLIP/SigLIP vision tower takes, as the checkpoint's
`preprocessor_config.json` says.

Used by the exporter (its parity check compares these pixel values with transformers' own image
processor) and copied verbatim into the image entry's first step, so it imports only the standard
library, numpy and Pillow (never `shoal`).

Steps, as transformers' Pillow image processors (`CLIPImageProcessorPil`,
`SiglipImageProcessorPil`) run them: decode, convert to RGB (transparency composited onto white),
resize (CLIP: the shortest edge to `size.shortest_edge`, the other in proportion; SigLIP: to a
fixed height x width) with the configured resampling filter, center crop, rescale (x 1/255),
normalize ((x - mean) / std), channels first.

Settings (`settings`, stored in the manifest as extra["image_preprocessing"]; see
`preprocessing_settings`):
    resize          {"shortest_edge": int} | {"height": int, "width": int} | null
    resample        int: Pillow's filter number (2 bilinear, 3 bicubic)
    crop            {"height": int, "width": int} | null
    rescale_factor  float | null
    mean, std       [float, float, float] | null
    convert_rgb     bool
    height, width   int: the size of the pixel values produced (the graph's input)

Refused, each as an `ImageError` that names the problem: bytes that are not an image of an
allowed format (`FORMATS`), an image over `max_pixels` (checked from the header, before the
pixels are decoded: a small file can expand to gigabytes), and a file whose pixels fail to decode
(truncated or corrupt).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

# Pillow format names of the files accepted (JPEG, PNG, WebP).
FORMATS = ("JPEG", "PNG", "WEBP")


class ImageError(ValueError):
    """What is wrong with one image, said so that the sender can fix it."""


def preprocessing_settings(
    config: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings above from a transformers `preprocessor_config.json` (CLIP or SigLIP image
    processor), over the processor class's `defaults` for keys the file leaves out. A bare number
    (older configs, e.g. OpenAI's CLIP) is, as transformers 5 reads it, the shortest edge as
    `size` and both sides as `crop_size`. ValueError names a setting it cannot follow."""
    config = {**(defaults or {}), **config}
    size = config.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(config.get("crop_size"), int):
        config["crop_size"] = {"height": config["crop_size"], "width": config["crop_size"]}
    resize = None
    if config.get("do_resize", True):
        if "shortest_edge" in size and not config.get("use_square_size"):
            resize = {"shortest_edge": int(size["shortest_edge"])}
        elif "shortest_edge" in size:
            resize = {"height": int(size["shortest_edge"]), "width": int(size["shortest_edge"])}
        elif "height" in size and "width" in size:
            resize = {"height": int(size["height"]), "width": int(size["width"])}
        else:
            raise ValueError(f"size {size} has neither shortest_edge nor height and width")
    crop = None
    if config.get("do_center_crop", False):
        crop_size = config.get("crop_size") or {}
        if not ("height" in crop_size and "width" in crop_size):
            raise ValueError(f"crop_size {crop_size} lacks height and width")
        crop = {"height": int(crop_size["height"]), "width": int(crop_size["width"])}
        edge = (resize or {}).get("shortest_edge")
        if edge is not None and edge < max(crop["height"], crop["width"]):
            raise ValueError(
                f"crop_size {crop_size} is larger than the resized shortest edge {edge} "
                "(the crop would need padding)"
            )
    final = crop or (resize if resize and "height" in resize else None)
    if final is None:
        raise ValueError("the images would keep their own size: set a fixed size or a crop")
    normalize = config.get("do_normalize", True)
    return {
        "resize": resize,
        "resample": int(config.get("resample", 3)),
        "crop": crop,
        "rescale_factor": float(config.get("rescale_factor", 1 / 255))
        if config.get("do_rescale", True)
        else None,
        "mean": [float(v) for v in config["image_mean"]] if normalize else None,
        "std": [float(v) for v in config["image_std"]] if normalize else None,
        "convert_rgb": bool(config.get("do_convert_rgb", True)),
        "height": final["height"],
        "width": final["width"],
    }


def open_image(data: bytes, max_pixels: int) -> Any:
    """A decoded Pillow image from file bytes, or ImageError (format, size, corrupt pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        # Reads the header only: format, width and height. Pillow warns from 89 M pixels on;
        # `max_pixels` is the limit here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            f"is not a JPEG, PNG or WebP image ({_describe(data)}); send the image file's bytes "
            "in one of those formats"
        ) from None
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked in open too
        raise ImageError(
            f"is over the limit of {max_pixels} pixels ({exc}); send a smaller image"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot be read as an image ({exc}); send a valid image file") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "send a smaller image (downscale it first)"
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(
            f"is a {image.format} file whose pixels cannot be decoded ({exc}): it is truncated "
            "or corrupt; send the whole file"
        ) from None
    return image


def _describe(data: bytes) -> str:
    if not data:
        return "0 bytes"
    return f"{len(data)} bytes starting {data[:8].hex()}"


def to_rgb(image: Any) -> Any:
    """RGB, with any transparency composited onto white (as transformers' convert_to_rgb)."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, resize: dict[str, int]) -> tuple[int, int]:
    """(width, height) after resizing: the shortest edge to its target, the other in proportion
    (truncated, as transformers' get_resize_output_image_size), or a fixed size."""
    if "shortest_edge" not in resize:
        return resize["width"], resize["height"]
    target = resize["shortest_edge"]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(target * long / short)
    return (target, new_long) if width <= height else (new_long, target)


def pixel_values(image: Any, settings: dict[str, Any]) -> np.ndarray:
    """A decoded Pillow image -> float32 [3, height, width]."""
    if settings["convert_rgb"] or image.mode != "RGB":
        image = to_rgb(image)
    resize = settings["resize"]
    if resize:
        size = resized_size(image.width, image.height, resize)
        if size != image.size:
            image = image.resize(size, resample=settings["resample"])
    array = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    crop = settings["crop"]
    if crop:
        top = (array.shape[0] - crop["height"]) // 2
        left = (array.shape[1] - crop["width"]) // 2
        array = array[top : top + crop["height"], left : left + crop["width"]]
    values = array.astype(np.float64)
    if settings["rescale_factor"] is not None:
        values = values * settings["rescale_factor"]
    values = values.astype(np.float32)
    if settings["mean"] is not None:
        mean = np.asarray(settings["mean"], dtype=np.float32)
        std = np.asarray(settings["std"], dtype=np.float32)
        values = (values - mean) / std
    values = np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)
    expected = (3, settings["height"], settings["width"])
    if values.shape != expected:  # a settings bug, never the sender's image
        raise RuntimeError(f"preprocessing produced {values.shape}, expected {expected}")
    return values


def preprocess(images: list[bytes], settings: dict[str, Any], max_pixels: int) -> np.ndarray:
    """Image files -> float32 [N, 3, height, width]; ImageError says which row is refused."""
    batch = np.empty((len(images), 3, settings["height"], settings["width"]), dtype=np.float32)
    for row, data in enumerate(images):
        try:
            batch[row] = pixel_values(open_image(data, max_pixels), settings)
        except ImageError as exc:
            raise ImageError(f"IMAGE[{row}] {exc}") from None
    return batch
