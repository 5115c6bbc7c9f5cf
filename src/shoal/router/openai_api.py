"""OpenAI-compatible `POST /v1/embeddings` and the TEI / Cohere / Jina `POST /v1/rerank`, mapped
onto an entry's ensemble through its manifest (tensor names from shoal.contract, checked against
the manifest's inputs and outputs; batch size and dims from the manifest).

Request parsing and response shaping are pure functions; `OpenAIEndpoints` sends the tensors
through the router (affinity, holding, retries) with a caller-given `infer` function.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.contract import (
    INPUT_ADAPTER,
    INPUT_QUERY,
    INPUT_TEXT,
    INPUT_TEXT_TYPE,
    OUTPUT_EMBEDDING,
    OUTPUT_SCORE,
    STEP_TOKENIZE,
    adapter_name_problem,
    step_name,
)
from shoal.manifest import Manifest
from shoal.model_repository.entry import MASK
from shoal.postprocessing import l2_normalize
from shoal.router.core import Router
from shoal.router.errors import ErrorKind, RouterError

ENCODING_FORMATS = ("float", "base64")
TEXT_TYPES = ("query", "document")

# (model, triton model, {input: texts}, [outputs], client timeout) -> {output: array}
Infer = Callable[
    [str, str, dict[str, list[str]], list[str], float | None], Awaitable[dict[str, np.ndarray]]
]


def invalid(message: str, param: str | None = None) -> RouterError:
    return RouterError(ErrorKind.INVALID_REQUEST, message, param)


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    texts: list[str]
    dimensions: int | None
    encoding_format: str
    input_type: str | None  # shoal extension: "query" / "document" prefixes (TEXT_TYPE)
    adapter: str | None = None  # shoal extension: the LoRA adapter to apply (ADAPTER)


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


def _model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("`model` is required: the name of the model to call", "model")
    return model


def _strings(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise invalid(
        f"`{param}` must be a string or a non-empty list of strings (token arrays are not "
        "accepted: the model tokenizes)",
        param,
    )


def _object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise invalid("the request body must be a JSON object")
    return payload


def parse_embeddings(payload: Any) -> EmbeddingsRequest:
    payload = _object(payload)
    model = _model(payload)
    texts = _strings(payload.get("input"), "input")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise invalid("`dimensions` must be a positive integer", "dimensions")
    encoding_format = payload.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise invalid(f"`encoding_format` must be one of {ENCODING_FORMATS}", "encoding_format")
    input_type = payload.get("input_type")
    if input_type is not None and input_type not in TEXT_TYPES:
        raise invalid(f"`input_type` must be one of {TEXT_TYPES}", "input_type")
    adapter = payload.get("adapter")
    problem = None if adapter is None else adapter_name_problem(adapter)
    if problem:
        raise invalid(f"`adapter` must name one of the model's LoRA adapters: {problem}", "adapter")
    return EmbeddingsRequest(model, texts, dimensions, encoding_format, input_type, adapter)


def parse_rerank(payload: Any) -> RerankRequest:
    """Cohere/Jina send `documents` (strings or {"text": ...}) and `return_documents`; TEI sends
    `texts` and `return_text`. Both are accepted."""
    payload = _object(payload)
    model = _model(payload)
    query = payload.get("query")
    if not isinstance(query, str):
        raise invalid("`query` must be a string", "query")
    param = "documents" if "documents" in payload else "texts"
    raw = payload.get(param)
    if isinstance(raw, list):
        raw = [d.get("text") if isinstance(d, dict) else d for d in raw]
    documents = _strings(raw, param) if not isinstance(raw, str) else None
    if documents is None:
        raise invalid(f"`{param}` must be a list of strings", param)
    top_n = payload.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise invalid("`top_n` must be a positive integer", "top_n")
    return_documents = payload.get("return_documents", payload.get("return_text", False))
    if not isinstance(return_documents, bool):
        raise invalid("`return_documents` must be true or false", "return_documents")
    return RerankRequest(model, query, documents, top_n, return_documents)


def require_manifest(
    model: str, manifest: Manifest | None, inputs: set[str], output: str
) -> Manifest:
    """The entry's manifest, checked to have the tensors an endpoint needs."""
    if manifest is None:
        raise invalid(
            f"model {model!r} has no shoal manifest here, so its tensors are unknown; call it "
            f"with KServe v2 (POST /v2/models/{model}/infer)",
            "model",
        )
    have_inputs = {t.name for t in manifest.inputs}
    have_outputs = {t.name for t in manifest.outputs}
    if not inputs <= have_inputs or output not in have_outputs:
        endpoint = "/v1/rerank" if output == OUTPUT_SCORE else "/v1/embeddings"
        raise invalid(
            f"model {model!r} is a {manifest.task!r} model: {endpoint} needs inputs "
            f"{sorted(inputs)} and output {output!r}; its outputs are {sorted(have_outputs)}",
            "model",
        )
    return manifest


def check_dimensions(manifest: Manifest, dimensions: int | None) -> int | None:
    """The width to truncate to, or None to keep the entry's. Narrower than the entry's own only
    where the manifest says the model was trained for Matryoshka truncation."""
    width = manifest.dims
    if dimensions is None or dimensions == width:
        return None
    if manifest.extra.get("matryoshka") and width is not None and dimensions < width:
        return dimensions
    allowed = f"at most {width}" if manifest.extra.get("matryoshka") else f"only {width}"
    raise invalid(
        f"model {manifest.name!r} cannot give {dimensions} dimensions: it allows {allowed}",
        "dimensions",
    )


def check_adapter(manifest: Manifest, adapter: str) -> None:
    """The adapter is one the entry was exported with (its manifest lists them)."""
    known = [spec.name for spec in manifest.adapters]
    if adapter not in known:
        has = f"has the LoRA adapters {known}" if known else "has no LoRA adapters"
        raise invalid(f"model {manifest.name!r} {has}, not {adapter!r}", "adapter")


def embedding_data(vectors: np.ndarray, encoding_format: str) -> list[dict[str, Any]]:
    data = []
    for index, vector in enumerate(vectors):
        if encoding_format == "base64":
            value: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        else:
            value = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    return data


def rerank_results(
    scores: np.ndarray, documents: list[str], top_n: int | None, return_documents: bool
) -> list[dict[str, Any]]:
    order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))[: top_n or None]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
        if return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    return results


def usage(tokens: int | None) -> dict[str, int]:
    return {} if tokens is None else {"prompt_tokens": tokens, "total_tokens": tokens}


class OpenAIEndpoints:
    def __init__(self, router: Router, infer: Infer) -> None:
        self.router = router
        self.infer = infer

    async def embeddings(self, payload: Any, timeout_s: float | None) -> dict[str, Any]:
        request = parse_embeddings(payload)
        route = self.router.route(request.model)
        manifest = require_manifest(request.model, route.manifest, {INPUT_TEXT}, OUTPUT_EMBEDDING)
        truncate_to = check_dimensions(manifest, request.dimensions)
        inputs = {INPUT_TEXT: request.texts}
        if request.input_type is not None:
            if INPUT_TEXT_TYPE not in {t.name for t in manifest.inputs}:
                raise invalid(f"model {request.model!r} takes no input_type", "input_type")
            inputs[INPUT_TEXT_TYPE] = [request.input_type] * len(request.texts)
        if request.adapter is not None:
            check_adapter(manifest, request.adapter)
            inputs[INPUT_ADAPTER] = [request.adapter] * len(request.texts)
        outputs, tokens = await self._run(
            request.model, manifest, inputs, OUTPUT_EMBEDDING, timeout_s
        )
        vectors = outputs.reshape(len(request.texts), -1)
        if truncate_to is not None:
            vectors = vectors[:, :truncate_to]
            if manifest.normalize:
                vectors = l2_normalize(vectors)
        return {
            "object": "list",
            "data": embedding_data(vectors, request.encoding_format),
            "model": request.model,
            "usage": usage(tokens),
        }

    async def rerank(self, payload: Any, timeout_s: float | None) -> dict[str, Any]:
        request = parse_rerank(payload)
        route = self.router.route(request.model)
        manifest = require_manifest(
            request.model, route.manifest, {INPUT_QUERY, INPUT_TEXT}, OUTPUT_SCORE
        )
        inputs = {
            INPUT_QUERY: [request.query] * len(request.documents),
            INPUT_TEXT: request.documents,
        }
        scores, tokens = await self._run(request.model, manifest, inputs, OUTPUT_SCORE, timeout_s)
        return {
            "object": "list",
            "model": request.model,
            "results": rerank_results(
                scores.reshape(-1), request.documents, request.top_n, request.return_documents
            ),
            "usage": usage(tokens),
        }

    async def _run(
        self,
        model: str,
        manifest: Manifest,
        inputs: dict[str, list[str]],
        output: str,
        timeout_s: float | None,
    ) -> tuple[np.ndarray, int | None]:
        """The output for every row (in chunks of the entry's max batch size, sent at once), and
        the prompt's token count from the entry's tokenize step when counting is on."""
        rows = len(next(iter(inputs.values())))
        size = max(1, manifest.max_batch_size)
        chunks = [{k: v[i : i + size] for k, v in inputs.items()} for i in range(0, rows, size)]
        calls = [self.infer(model, model, chunk, [output], timeout_s) for chunk in chunks]
        count = self.router.settings.count_tokens
        tokenize = step_name(model, STEP_TOKENIZE)
        if count:
            # ADAPTER goes to the encode step only: the tokenize step does not take it.
            texts_only = [{k: v for k, v in c.items() if k != INPUT_ADAPTER} for c in chunks]
            calls += [self.infer(model, tokenize, c, [MASK], timeout_s) for c in texts_only]
        answers = await asyncio.gather(*calls)
        values = np.concatenate([answer[output] for answer in answers[: len(chunks)]])
        tokens = sum(int(a[MASK].sum()) for a in answers[len(chunks) :]) if count else None
        return values, tokens
