"""shoal.image_preprocessing: the pixel values equal transformers' own Pillow image processors
(CLIP: shortest-edge bicubic resize + center crop; SigLIP: fixed-size bilinear resize) on images of
every mode and format a client may send; bad files are refused with messages naming the row."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest

from shoal.image_preprocessing import (
    ImageError,
    open_image,
    preprocess,
    preprocessing_settings,
    resized_size,
)

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

LARGE_LIMIT = 1 << 40


def _config(family: str, tiny_model) -> dict:
    return json.loads((tiny_model(family) / "preprocessor_config.json").read_text())


def _reference(family: str, config: dict):
    import transformers

    name = {"clip": "CLIPImageProcessorPil", "siglip": "SiglipImageProcessorPil"}[family]
    return getattr(transformers, name)(
        **{k: v for k, v in config.items() if k != "image_processor_type"}
    )


def _file(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _images() -> list[bytes]:
    from shoal.exporter.image_text_parity import probe_images

    rng = np.random.default_rng(3)
    extra = [
        _file(Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)), "PNG"),
        _file(Image.fromarray(rng.integers(0, 256, (1, 90), dtype=np.uint8), "L"), "PNG"),
        _file(Image.fromarray(rng.integers(0, 256, (64, 48, 4), dtype=np.uint8)), "WEBP"),
    ]
    return [p.data for p in probe_images()] + extra


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_pixel_values_equal_the_transformers_pillow_processor(family, tiny_model) -> None:
    config = _config(family, tiny_model)
    files = _images()
    got = preprocess(files, preprocessing_settings(config), LARGE_LIMIT)
    want = _reference(family, config)(
        [Image.open(io.BytesIO(f)) for f in files], return_tensors="np"
    )["pixel_values"]
    assert got.shape == want.shape == (len(files), 3, 32, 32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert len({got[i].tobytes() for i in range(len(files))}) == len(files)  # all differ


def test_settings_follow_the_preprocessor_config(tiny_model) -> None:
    clip = preprocessing_settings(_config("clip", tiny_model))
    assert clip["resize"] == {"shortest_edge": 32} and clip["crop"] == {"height": 32, "width": 32}
    assert clip["resample"] == 3 and (clip["height"], clip["width"]) == (32, 32)
    siglip = preprocessing_settings(_config("siglip", tiny_model))
    assert siglip["resize"] == {"height": 32, "width": 32} and siglip["crop"] is None
    assert siglip["resample"] == 2 and siglip["mean"] == [0.5, 0.5, 0.5]


def test_settings_refuse_what_they_cannot_follow() -> None:
    base = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    with pytest.raises(ValueError, match="larger than the resized shortest edge"):
        preprocessing_settings(
            {
                **base,
                "size": {"shortest_edge": 16},
                "do_center_crop": True,
                "crop_size": {"height": 32, "width": 32},
            }
        )
    with pytest.raises(ValueError, match="keep their own size"):
        preprocessing_settings({**base, "do_resize": False})


def test_shortest_edge_resize_keeps_the_aspect_ratio_truncating_the_long_side() -> None:
    assert resized_size(97, 61, {"shortest_edge": 32}) == (50, 32)  # int(32 * 97 / 61) = 50
    assert resized_size(40, 130, {"shortest_edge": 32}) == (32, 104)
    assert resized_size(40, 130, {"height": 8, "width": 9}) == (9, 8)


def _settings(tiny_model) -> dict:
    return preprocessing_settings(_config("clip", tiny_model))


def test_a_batch_equals_single_images(tiny_model) -> None:
    settings, files = _settings(tiny_model), _images()
    batch = preprocess(files, settings, LARGE_LIMIT)
    for row, data in enumerate(files):
        np.testing.assert_array_equal(batch[row], preprocess([data], settings, LARGE_LIMIT)[0])


def test_bytes_that_are_no_image_are_refused_naming_the_row(tiny_model) -> None:
    good = _images()[0]
    with pytest.raises(ImageError, match=r"IMAGE\[1\] is not a JPEG, PNG or WebP image"):
        preprocess([good, b"hello, not an image"], _settings(tiny_model), LARGE_LIMIT)
    with pytest.raises(ImageError, match=r"IMAGE\[0\] is not a JPEG, PNG or WebP image \(0 bytes"):
        preprocess([b""], _settings(tiny_model), LARGE_LIMIT)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_refused(fmt, tiny_model) -> None:
    data = _file(Image.new("RGB", (8, 8), (1, 2, 3)), fmt)
    with pytest.raises(ImageError, match=r"IMAGE\[0\] is not a JPEG, PNG or WebP image"):
        preprocess([data], _settings(tiny_model), LARGE_LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_file_is_refused_as_corrupt(fmt, tiny_model) -> None:
    rng = np.random.default_rng(0)
    data = _file(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(
        ImageError,
        match=r"IMAGE\[0\] (is a \w+ file whose pixels cannot be "
        r"decoded|cannot be read as an image)",
    ):
        preprocess([data[: len(data) // 2]], _settings(tiny_model), LARGE_LIMIT)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds a few bytes of compressed zeros: a
    decompression bomb's shape (its pixels would be gigabytes, its file is tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(tiny_model) -> None:
    settings = _settings(tiny_model)
    bomb = _png_header_only(100_000, 100_000)  # 10^10 pixels (30 GB of RGB) in ~60 bytes
    assert len(bomb) < 200
    with pytest.raises(
        ImageError,
        match=r"IMAGE\[0\] is over the limit of 64000000 pixels "
        r"\(Image size \(10000000000 pixels\)",
    ):
        preprocess([bomb], settings, 64_000_000)
    # Under Pillow's own limit (2 x 89 M pixels), shoal's: the header's size, before any decoding
    # (the file holds a few bytes of pixels: decoding would fail as truncated instead).
    small_bomb = _png_header_only(10_000, 10_000)
    with pytest.raises(
        ImageError,
        match=r"IMAGE\[0\] is 10000x10000 = 100000000 pixels, over "
        r"the limit of 64000000; send a smaller image",
    ):
        preprocess([small_bomb], settings, 64_000_000)
    with pytest.raises(ImageError, match="pixels cannot be decoded"):
        preprocess([_png_header_only(1000, 1000)], settings, LARGE_LIMIT)


def test_the_pixel_limit_is_exact(tiny_model) -> None:
    data = _file(Image.new("RGB", (100, 50)), "PNG")
    assert open_image(data, 5000).size == (100, 50)
    with pytest.raises(ImageError, match="100x50 = 5000 pixels, over the limit of 4999"):
        open_image(data, 4999)


def test_an_older_config_with_bare_numbers_and_left_out_keys_reads_as_transformers_does() -> None:
    """OpenAI's CLIP preprocessor_config.json gives `size: 224, crop_size: 224` and older files
    leave keys out: shoal fills them from the processor class's defaults (the CLIP adapter's)."""
    import transformers

    from shoal.exporter.adapters.image_text import ClipAdapter

    legacy = {
        "feature_extractor_type": "CLIPFeatureExtractor",
        "size": 40,
        "crop_size": 40,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
    }  # no resample, mean or std: the class's bicubic and OpenAI's mean and std
    settings = preprocessing_settings(legacy, ClipAdapter.image_defaults)
    assert settings["resize"] == {"shortest_edge": 40}
    assert settings["crop"] == {"height": 40, "width": 40} and settings["resample"] == 3
    reference = transformers.CLIPImageProcessorPil(
        **{k: v for k, v in legacy.items() if k != "feature_extractor_type"}
    )
    files = _images()
    want = reference([Image.open(io.BytesIO(f)) for f in files], return_tensors="np")[
        "pixel_values"
    ]
    np.testing.assert_array_equal(preprocess(files, settings, LARGE_LIMIT), want)
