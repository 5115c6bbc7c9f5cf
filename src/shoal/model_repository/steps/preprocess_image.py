"""Triton python-backend model: the first step of an image-text export's image entry (BYTES image
files -> float32 pixel values for the vision tower).

shoal copies this file to `<model>-image__tokenize/1/model.py` (the entry's first-step slot keeps
its name), beside `image_preprocessing.py` (the exporter's standalone module, the same code its
parity check ran) and `step.json`. No shoal imports: it runs inside Triton with numpy and Pillow.

Per request (one response each; a bad request gets an error response, the others in the batch
are served). A client's mistake is answered as INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT),
naming the row: a file over `max_image_bytes`, bytes that are not a JPEG, PNG or WebP image, an
image whose header declares more than `max_image_pixels` pixels (refused before its pixels are
decoded: a decompression bomb), or a file whose pixels fail to decode (truncated, corrupt).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

STEP_CONFIG = "step.json"
IMAGE = "IMAGE"


class RequestError(ValueError):
    """What is wrong with one request, said so that the caller can fix it."""


def error_response(exc: Exception):
    """INVALID_ARG for the client's mistakes (Triton answers 400 / INVALID_ARGUMENT), else
    INTERNAL."""
    mistake = isinstance(exc, RequestError)
    code = pb_utils.TritonError.INVALID_ARG if mistake else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), code))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import image_preprocessing  # beside this file in the version folder

        version_dir = Path(args["model_repository"]) / args["model_version"]
        settings = json.loads((version_dir / STEP_CONFIG).read_text())
        model_config = json.loads(args["model_config"])
        self.preprocessing = image_preprocessing
        self.settings = settings["image_preprocessing"]
        self.max_bytes = int(settings["max_image_bytes"])
        self.max_pixels = int(settings["max_image_pixels"])
        (output,) = model_config["output"]
        self.output = output["name"]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._preprocess(request))
            except Exception as exc:  # noqa: BLE001  one bad request must not fail the others
                responses.append(error_response(exc))
        return responses

    def _images(self, request) -> list[bytes]:
        values = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy().reshape(-1)
        if not len(values):
            raise RequestError(f"{IMAGE} has no rows: send a batch of at least one image")
        images = []
        for row, value in enumerate(values):
            data = value if isinstance(value, bytes) else bytes(value)
            if len(data) > self.max_bytes:
                raise RequestError(
                    f"{IMAGE}[{row}] is {len(data)} bytes, over the limit of {self.max_bytes} "
                    "bytes per image; send a smaller file"
                )
            images.append(data)
        return images

    def _preprocess(self, request):
        images = self._images(request)
        try:
            pixels = self.preprocessing.preprocess(images, self.settings, self.max_pixels)
        except self.preprocessing.ImageError as exc:
            raise RequestError(str(exc)) from None
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(self.output, np.ascontiguousarray(pixels))]
        )
