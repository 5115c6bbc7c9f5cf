"""The HTTP front door (aiohttp): KServe v2 as Triton serves it, proxied through the core, plus
the OpenAI-style endpoints. Request bodies are read as bytes (so a held or retried request can be
sent again) and passed on untouched: binary tensors and `Inference-Header-Content-Length` go
through as they came; only the size is checked.

Errors: KServe paths answer Triton's shape `{"error": "..."}` (what tritonclient reads), /v1
paths the OpenAI shape `{"error": {"message", "type", "param", "code"}}`; statuses come from
errors.ERROR_TABLE.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web

from shoal import __version__ as shoal_version
from shoal.fleet.replica import Replica
from shoal.router.core import Router
from shoal.router.errors import (
    ErrorKind,
    ModelMissingOnReplica,
    ReplicaRefused,
    ReplicaUnreachable,
    RouterError,
    replica_failure,
)
from shoal.router.kserve_json import (
    HEADER_LENGTH,
    BadInferResponse,
    error_message,
    infer_body,
    read_outputs,
)
from shoal.router.openai_api import OpenAIEndpoints
from shoal.router.settings import TIMEOUT_HEADER, RouterSettings
from shoal.router.upstream_http import HttpUpstream

log = logging.getLogger(__name__)

# KServe v2 extensions the router passes through. Not `sequence` (a sequence must stay on one
# replica) nor the repository / shared-memory / trace / logging APIs (not served).
EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "model_configuration",
    "schedule_policy",
]
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "expect",
}  # fmt: skip
NOT_SERVED_PREFIXES = (
    "/v2/repository", "/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/trace", "/v2/logging",
)  # fmt: skip
MODEL = "/v2/models/{model}"
VERSIONED = "/v2/models/{model}/versions/{version}"


def error_response(exc: RouterError, path: str, retry_after_s: int) -> web.Response:
    response = exc.response
    headers = {"Retry-After": str(retry_after_s)} if response.retry_after else {}
    if path.startswith("/v1/"):
        body: dict[str, Any] = {
            "error": {
                "message": exc.message,
                "type": response.openai_type,
                "param": exc.param,
                "code": exc.kind.value,
            }
        }
    else:
        body = {"error": exc.message}
    return web.json_response(body, status=response.http_status, headers=headers)


def client_timeout(request: web.Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e9:
        raise RouterError(
            ErrorKind.INVALID_REQUEST,
            f"header {TIMEOUT_HEADER}: {raw!r} is not a positive number of seconds",
        )
    return seconds


class HttpFrontDoor:
    def __init__(self, router: Router, settings: RouterSettings) -> None:
        self.router = router
        self.settings = settings
        self.upstream = HttpUpstream()
        self.openai = OpenAIEndpoints(router, self._infer_tensors)
        self._dropped_headers = HOP_BY_HOP | {
            settings.restricted_api_header.lower(),
            TIMEOUT_HEADER.lower(),
        }

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[self._errors]
        )
        post = web.post

        def get(path: str, handler):  # no HEAD: the upstream client reads a body after a status
            return web.get(path, handler, allow_head=False)

        app.add_routes([
            get("/v2/health/live", self.live),
            get("/v2/health/ready", self.live),
            get("/v2", self.server_metadata),
            get("/v2/models/stats", self.all_statistics),
            post("/v1/embeddings", self.embeddings),
            post("/v1/rerank", self.rerank),
        ])  # fmt: skip
        for prefix in (MODEL, VERSIONED):
            app.add_routes([
                get(prefix, self.proxy_held),
                get(prefix + "/config", self.proxy_held),
                post(prefix + "/infer", self.proxy_held),
                get(prefix + "/ready", self.model_ready),
                get(prefix + "/stats", self.statistics),
            ])  # fmt: skip
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._close)
        return app

    async def _start(self, _app: web.Application) -> None:
        await self.router.start()

    async def _close(self, _app: web.Application) -> None:
        await self.upstream.close()

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except RouterError as exc:
            return error_response(exc, request.path, self.settings.retry_after_s)
        except (ReplicaUnreachable, ModelMissingOnReplica) as exc:
            return error_response(replica_failure(exc), request.path, self.settings.retry_after_s)
        except ReplicaRefused as exc:  # Triton's own status, for a request the router built
            kind = "invalid_request_error" if exc.status < 500 else "server_error"
            error = {"message": exc.message, "type": kind, "param": None, "code": "replica_error"}
            return web.json_response({"error": error}, status=exc.status)
        except web.HTTPNotFound:
            return error_response(self._not_served(request.path), request.path, 0)
        except web.HTTPMethodNotAllowed as exc:
            message = (
                f"{request.method} {request.path} is not allowed; use {sorted(exc.allowed_methods)}"
            )
            return error_response(RouterError(ErrorKind.NOT_SERVED, message), request.path, 0)

    def _not_served(self, path: str) -> RouterError:
        if path.startswith(NOT_SERVED_PREFIXES):
            return RouterError(
                ErrorKind.NOT_SERVED,
                f"{path}: Triton's repository, shared-memory, trace and logging APIs are not "
                "served through the router (placement belongs to the operator or `shoal serve`)",
            )
        return RouterError(
            ErrorKind.NOT_SERVED,
            f"{path} is not served here: the router serves KServe v2 (/v2/...) and "
            "POST /v1/embeddings, POST /v1/rerank",
        )

    # -- the router's own answers -----------------------------------------------------------------
    async def live(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def server_metadata(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"name": "shoal-router", "version": shoal_version, "extensions": EXTENSIONS}
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        route = self.router.route(request.match_info["model"])
        return web.Response(status=200 if route.ready else 400)

    # -- proxied ----------------------------------------------------------------------------------
    async def proxy_held(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        body = await self._read_body(request)
        headers = self._forward_headers(request)

        async def attempt(replica: Replica, timeout_s: float):
            return await self.upstream.send(
                replica, request.method, request.raw_path, headers, body, timeout_s
            )

        answer = await self.router.call(model, attempt, client_timeout(request))
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def statistics(self, request: web.Request) -> web.Response:
        """Statistics never wait for a model: from one ready replica, or empty when none."""
        replica = self.router.ready_replica(request.match_info["model"])
        if replica is None:
            return web.json_response({"model_stats": []})
        answer = await self.upstream.send(
            replica, "GET", request.raw_path, self._forward_headers(request), b"",
            self.settings.upstream_timeout_s, model_scoped=False,
        )  # fmt: skip
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def all_statistics(self, request: web.Request) -> web.Response:
        """Each known model's statistics from one of its ready replicas, in one list."""
        stats: list[Any] = []
        for model in self.router.source.models():
            replica = self.router.ready_replica(model)
            if replica is None:
                continue
            answer = await self.upstream.send(
                replica, "GET", f"/v2/models/{model}/stats", {}, b"",
                self.settings.upstream_timeout_s, model_scoped=False,
            )  # fmt: skip
            if answer.status == 200:
                stats.extend(json.loads(answer.body).get("model_stats", []))
        return web.json_response({"model_stats": stats})

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(request.content_length, limit)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(None, limit) from None
        except Exception as exc:  # a body cut short or a broken chunked encoding
            raise RouterError(
                ErrorKind.INVALID_REQUEST,
                f"the request body could not be read ({type(exc).__name__}: {exc}); check "
                "Content-Length against the bytes sent",
            ) from None
        _check_header_length(request.headers.get(HEADER_LENGTH), len(body))
        return body

    def _forward_headers(self, request: web.Request) -> dict[str, str]:
        dropped = self._dropped_headers
        return {k: v for k, v in request.headers.items() if k.lower() not in dropped}

    # -- OpenAI-style -----------------------------------------------------------------------------
    async def embeddings(self, request: web.Request) -> web.Response:
        answer = await self.openai.embeddings(await self._json(request), client_timeout(request))
        return web.json_response(answer)

    async def rerank(self, request: web.Request) -> web.Response:
        answer = await self.openai.rerank(await self._json(request), client_timeout(request))
        return web.json_response(answer)

    async def _json(self, request: web.Request) -> Any:
        body = await self._read_body(request)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise RouterError(
                ErrorKind.INVALID_REQUEST, f"the request body is not valid JSON: {exc}"
            ) from None

    async def _infer_tensors(
        self,
        model: str,
        triton_model: str,
        inputs: dict[str, list[str]],
        outputs: list[str],
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        body = infer_body(inputs, outputs)
        headers = {"Content-Type": "application/json"}
        path = f"/v2/models/{triton_model}/infer"

        async def attempt(replica: Replica, attempt_timeout_s: float):
            return await self.upstream.send(replica, "POST", path, headers, body, attempt_timeout_s)

        answer = await self.router.call(model, attempt, timeout_s)
        if answer.status != 200:
            raise ReplicaRefused(answer.status, error_message(answer.body))
        try:
            return read_outputs(answer.body, answer.headers.get(HEADER_LENGTH))
        except BadInferResponse as exc:
            raise ReplicaRefused(502, str(exc)) from None


def _too_large(size: int | None, limit: int) -> RouterError:
    what = f"{size} bytes" if size is not None else "over the limit"
    return RouterError(
        ErrorKind.BODY_TOO_LARGE,
        f"the request body is {what}; the router accepts at most {limit} bytes "
        "(setting max_body_bytes, flag --max-body-bytes)",
    )


def _check_header_length(value: str | None, body_length: int) -> None:
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        length = -1
    if not 0 <= length <= body_length:
        raise RouterError(
            ErrorKind.INVALID_REQUEST,
            f"{HEADER_LENGTH}: {value!r} must be a byte count within the body's "
            f"{body_length} bytes (the JSON header's length, binary tensors after it)",
        )
