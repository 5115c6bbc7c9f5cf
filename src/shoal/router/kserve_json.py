"""KServe v2 HTTP infer bodies the router itself builds (the OpenAI-style endpoints): texts in as
JSON, outputs back as binary tensors (exact float32, no JSON floats to parse)."""

from __future__ import annotations

import json

import numpy as np
from tritonclient.utils import triton_to_np_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"


class BadInferResponse(ValueError):
    """A replica's answer that is not the KServe v2 binary response the router asked for."""


def infer_body(texts_by_input: dict[str, list[str]], outputs: list[str]) -> bytes:
    inputs = [
        {"name": name, "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}
        for name, texts in texts_by_input.items()
    ]
    requested = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    return json.dumps({"inputs": inputs, "outputs": requested}).encode()


def read_outputs(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of a binary KServe v2 response, by name."""
    try:
        split = int(header_length) if header_length is not None else len(body)
        header = json.loads(body[:split])
        tensors, offset = {}, split
        for output in header["outputs"]:
            dtype = triton_to_np_dtype(output["datatype"])
            size = output.get("parameters", {}).get("binary_data_size")
            if size is None:
                array = np.array(output["data"], dtype=dtype)
            else:
                array = np.frombuffer(body[offset : offset + size], dtype=dtype)
                offset += size
            tensors[output["name"]] = array.reshape(output["shape"])
        return tensors
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInferResponse(f"the replica's infer response could not be read: {exc}") from exc


def error_message(body: bytes) -> str:
    """Triton's `{"error": "..."}` text, or the body itself."""
    text = body.decode("utf-8", "replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text[:500]
