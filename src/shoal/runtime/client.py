"""Calling served models with plain tritonclient: what `shoal embed`, `shoal rerank` and
`shoal quickstart` send (the same calls an application makes; tensor names from shoal.contract).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from shoal.contract import INPUT_QUERY, INPUT_TEXT, INPUT_TEXT_TYPE, OUTPUT_EMBEDDING, OUTPUT_SCORE


class ModelCallError(RuntimeError):
    """The server refused or failed a request (the message carries Triton's own words)."""


def _module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module  # noqa: PLC0415
    elif protocol == "grpc":
        import tritonclient.grpc as module  # noqa: PLC0415
    else:
        raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
    return module


def _texts(module: Any, name: str, texts: list[str]) -> Any:
    tensor = module.InferInput(name, [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    return tensor


def strip_scheme(url: str) -> str:
    """tritonclient wants host:port."""
    return url.split("://", 1)[-1].rstrip("/")


def connect(url: str, protocol: str = "http") -> Any:
    return _module(protocol).InferenceServerClient(strip_scheme(url))


def wait_until_ready(client: Any, model: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.is_model_ready(model):
        if time.monotonic() > deadline:
            raise ModelCallError(f"model {model!r} not ready after {timeout_s:.0f}s")
        time.sleep(0.1)


def embed(
    client: Any,
    model: str,
    texts: list[str],
    *,
    protocol: str = "http",
    text_type: str | None = None,
) -> np.ndarray:
    """Dense vectors [len(texts), dims]."""
    module = _module(protocol)
    inputs = [_texts(module, INPUT_TEXT, texts)]
    if text_type:
        inputs.append(_texts(module, INPUT_TEXT_TYPE, [text_type] * len(texts)))
    outputs = [module.InferRequestedOutput(OUTPUT_EMBEDDING)]
    return _infer(client, model, inputs, outputs).as_numpy(OUTPUT_EMBEDDING)


def rerank(
    client: Any, model: str, query: str, documents: list[str], *, protocol: str = "http"
) -> np.ndarray:
    """One relevance score per document."""
    module = _module(protocol)
    inputs = [
        _texts(module, INPUT_QUERY, [query] * len(documents)),
        _texts(module, INPUT_TEXT, documents),
    ]
    outputs = [module.InferRequestedOutput(OUTPUT_SCORE)]
    return _infer(client, model, inputs, outputs).as_numpy(OUTPUT_SCORE).reshape(-1)


def _infer(client: Any, model: str, inputs: list, outputs: list) -> Any:
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    try:
        return client.infer(model, inputs, outputs=outputs)
    except InferenceServerException as exc:
        raise ModelCallError(f"model {model!r}: {exc.message()}") from exc
