"""Task `image-text` end to end: tiny CLIP and SigLIP exported by `shoal.exporter.export_model`,
both entries (`NAME` for TEXT, `NAME-image` for IMAGE) served by a real Triton and called with
plain tritonclient over HTTP and gRPC. Image and text EMBEDDINGs equal transformers' normalized
get_image_features / get_text_features; a pair's score from the served vectors equals the model's
own logits; a bad image (corrupt, another format, a decompression bomb, over the pixel limit) is
refused for its own request while the requests beside it are answered."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.contract import INPUT_IMAGE, INPUT_TEXT, OUTPUT_EMBEDDING, image_entry_name
from tests.exporter.test_image_preprocessing import _png_header_only
from tests.support.triton import serving_entries

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

FAMILIES = ("clip", "siglip")
MIN_COSINE = 0.99999
MAX_IMAGE_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 400_000  # over the probes (640x480 at most), under an ordinary 700x700 image
CLIENT_MISTAKE = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
TEXTS = ["a photo of a fish", "Café naïve 東京 🐟", "", "a shoal of small fish " * 30]


@dataclass
class Exported:
    name: str
    adapter: Any
    model: Any
    hf_tokenizer: Any
    plan: Any


def _file(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def probe_files() -> list[bytes]:
    from shoal.exporter.image_text_parity import probe_images

    return [p.data for p in probe_images()]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from transformers import AutoTokenizer

    from shoal.exporter.adapters import detect_adapter
    from shoal.exporter.checkpoint import inspect_checkpoint
    from shoal.exporter.export import export_model
    from shoal.exporter.options import ExportOptions
    from shoal.model_repository.entry import EntryOptions

    repository = tmp_path_factory.mktemp("image-text") / "repository"
    entries = {}
    for family in FAMILIES:
        checkpoint = tiny_model(family)
        options = ExportOptions(
            runtime="portable",
            entry=EntryOptions(
                encode_threads=1,
                max_queue_delay_microseconds=50_000,
                max_image_pixels=MAX_IMAGE_PIXELS,
                max_image_bytes=MAX_IMAGE_BYTES,
            ),
        )
        export_model(checkpoint, family, repository, options)
        adapter = detect_adapter(inspect_checkpoint(checkpoint))
        entries[family] = Exported(
            family,
            adapter,
            adapter.load(),
            AutoTokenizer.from_pretrained(str(checkpoint)),
            adapter.plan(ExportOptions()),
        )
    return repository, entries


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    repository, _ = exported
    names = [n for family in FAMILIES for n in (family, image_entry_name(family))]
    with serving_entries(repository, names, tmp_path_factory) as running:
        yield running


def client_for(server, protocol: str):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_address)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_address)


def embed(server, protocol: str, model: str, tensor: str, rows: list[bytes]) -> np.ndarray:
    module, client = client_for(server, protocol)
    data = module.InferInput(tensor, [len(rows), 1], "BYTES")
    data.set_data_from_numpy(np.array([[r] for r in rows], dtype=object))
    result = client.infer(model, [data], outputs=[module.InferRequestedOutput(OUTPUT_EMBEDDING)])
    vectors = result.as_numpy(OUTPUT_EMBEDDING)
    assert vectors.shape[0] == len(rows) and vectors.dtype == np.float32
    return vectors


def embed_images(server, protocol: str, family: str, files: list[bytes]) -> np.ndarray:
    return embed(server, protocol, image_entry_name(family), INPUT_IMAGE, files)


def embed_texts(server, protocol: str, family: str, texts: list[str]) -> np.ndarray:
    return embed(server, protocol, family, INPUT_TEXT, [t.encode() for t in texts])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def reference_images(entry: Exported, files: list[bytes]) -> np.ndarray:
    from PIL import Image

    processor = entry.adapter.image_processor()
    return np.stack(
        [
            entry.adapter.reference_image(entry.model, processor, Image.open(io.BytesIO(f)))[0]
            for f in files
        ]
    )


def reference_texts(entry: Exported, texts: list[str]) -> np.ndarray:
    return np.stack(
        [
            entry.adapter.reference_text(entry.model, entry.hf_tokenizer, entry.plan, t)
            for t in texts
        ]
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("family", FAMILIES)
def test_image_and_text_embeddings_equal_transformers(server, exported, family, protocol) -> None:
    entry = exported[1][family]
    files = probe_files()
    images = embed_images(server, protocol, family, files)
    texts = embed_texts(server, protocol, family, TEXTS)
    assert images.shape[1] == texts.shape[1] == entry.plan.hidden_size  # one space
    for got, want in zip(images, reference_images(entry, files), strict=True):
        assert cosine(got, want) >= MIN_COSINE
    for got, want in zip(texts, reference_texts(entry, TEXTS), strict=True):
        assert cosine(got, want) >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert min(cosine(a, b) for a, b in zip(images, images[1:], strict=False)) < 0.99  # differ


@pytest.mark.parametrize("family", FAMILIES)
def test_image_text_pairs_score_as_the_model_does(server, exported, family) -> None:
    """Scores from the served vectors (scale x cosine, + SigLIP's bias) equal the logits of the
    transformers model's own forward pass on the same images and texts."""
    import torch
    from PIL import Image

    entry = exported[1][family]
    files = probe_files()[:4]
    texts = TEXTS[:3]
    images = embed_images(server, "grpc", family, files)
    vectors = embed_texts(server, "http", family, texts)
    model = entry.model
    scores = images @ vectors.T * float(model.logit_scale.detach().exp())
    if family == "siglip":
        scores = scores + float(model.logit_bias.detach())
    processor = entry.adapter.image_processor()
    pixels = processor([Image.open(io.BytesIO(f)) for f in files], return_tensors="pt")
    padding = "max_length" if entry.adapter.pad_text_to_max_length else True
    tokens = entry.hf_tokenizer(
        texts,
        padding=padding,
        truncation=True,
        max_length=entry.plan.max_length,
        return_tensors="pt",
    )
    inputs = {"input_ids": tokens["input_ids"], "pixel_values": pixels["pixel_values"]}
    if entry.adapter.text_takes_mask:
        inputs["attention_mask"] = tokens["attention_mask"]
    with torch.inference_mode():
        want = model(**inputs).logits_per_image.numpy()
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)
    assert (scores.argmax(axis=1) == want.argmax(axis=1)).all()


def test_a_batch_of_images_equals_single_images(server) -> None:
    files = probe_files()
    batch = embed_images(server, "http", "clip", files)
    for row, data in enumerate(files):
        (single,) = embed_images(server, "grpc", "clip", [data])
        assert cosine(batch[row], single) >= MIN_COSINE


@pytest.mark.parametrize("family", FAMILIES)
def test_concurrent_texts_of_different_lengths_get_their_own_vectors(
    server, exported, family
) -> None:
    """The batcher joins requests of different token lengths in the encode step (padded there):
    each text's vector is still the one transformers gives it alone."""
    entry = exported[1][family]
    texts = [t for t in TEXTS if t] * 3
    expected = dict(zip(TEXTS, reference_texts(entry, TEXTS), strict=True))
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            (results[i],) = embed_texts(server, "grpc", family, [texts[i]])
        except BaseException as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == len(texts)
    for i, text in enumerate(texts):
        assert cosine(results[i], expected[text]) >= MIN_COSINE


def _bad_images() -> dict[str, tuple[bytes, str]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    jpeg = _file(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    return {
        "corrupt": (jpeg[: len(jpeg) // 2], r"IMAGE\[1\] is a JPEG file whose pixels cannot be"),
        "gif": (_file(Image.new("RGB", (8, 8)), "GIF"), r"IMAGE\[1\] is not a JPEG, PNG or WebP"),
        "text": (b"not an image", r"IMAGE\[1\] is not a JPEG, PNG or WebP image"),
        "bomb": (
            _png_header_only(10_000, 10_000),  # 100 M pixels (300 MB decoded) in ~70 bytes
            r"IMAGE\[1\] is 10000x10000 = 100000000 pixels, over the limit of 400000",
        ),
        "too many bytes": (
            b"\xff\xd8" + b"\0" * 1_100_000,
            r"IMAGE\[1\] is 1100002 bytes, over the limit of 1000000 bytes per image",
        ),
        "over the limit": (
            _file(Image.new("RGB", (700, 700)), "PNG"),
            r"IMAGE\[1\] is 700x700 = 490000 pixels, over the limit of 400000",
        ),
    }


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    "kind", ["corrupt", "gif", "text", "bomb", "over the limit", "too many bytes"]
)
def test_a_bad_image_is_refused_for_its_own_request(server, exported, protocol, kind) -> None:
    """The bad request and good requests sent at the same time (the batcher may join them): the
    bad one gets 400 / INVALID_ARGUMENT naming the row, every good one its embeddings."""
    data, message = _bad_images()[kind]
    good = probe_files()[:2]
    expected = embed_images(server, protocol, "clip", good)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def call_good(i: int) -> None:
        try:
            results[i] = embed_images(server, "grpc", "clip", good)
        except BaseException as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=call_good, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    with pytest.raises(InferenceServerException, match=message) as caught:
        embed_images(server, protocol, "clip", [good[0], data])
    for thread in threads:
        thread.join(timeout=120)
    assert caught.value.status() == CLIENT_MISTAKE[protocol], str(caught.value)
    assert not errors and len(results) == 4
    for vectors in results.values():
        np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_the_docs_image_text_example_runs_against_the_served_entries(server) -> None:
    """docs/tasks.md's `tasks-image-text` example, as written but for the server's address."""
    from tests.docs.test_doc_examples import run_example_against

    run_example_against("tasks-image-text", server.http_address)
