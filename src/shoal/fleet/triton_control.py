"""A small async client for Triton's control plane over HTTP (KServe v2 + Triton extensions):
repository index, load (optionally with a config override or uploaded files), unload, readiness,
and statistics (`last_inference`, counts, dynamic-batcher batch sizes) and pending requests.

Used by the local runtime (`shoal serve`'s control loop) and by the operator, which talks to one
Triton replica per client. Only httpx: no tritonclient, no torch.

Errors are classified the way a controller acts on them (SIE's load_errors, kopf's
Permanent/TemporaryError):
- `PermanentTritonError`: retrying the same call will fail the same way (bad config, missing
  files, unknown model, missing backend). Fix the entry, then retry.
- `RetryableTritonError`: the server was unreachable, timed out, or is busy; retry after a delay.
Triton's answer to a failed load is often only "failed to poll from model repository"; the
client then fetches the model's `reason` from the repository index, and, when given a
`log_reader` (a local server's log), the log lines that name the model.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Triton answers a failed load only after the load finished; MiniLM-size python steps take seconds,
# large encoders on GPU tens of seconds.
DEFAULT_LOAD_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT_S = 10.0

# Triton's restricted repository API (`--http-restricted-api=model-repository:<header>=<key>`):
# where pools run Triton that way (the Helm chart), the operator's environment names the header
# and holds the key, and every repository call (index, load, unload) carries it. Unset: no header.
ADMIN_HEADER_ENV, ADMIN_KEY_ENV = "SHOAL_TRITON_ADMIN_HEADER", "SHOAL_TRITON_ADMIN_KEY"
DEFAULT_ADMIN_HEADER = "shoal-admin-key"
REPOSITORY_PATH = "/v2/repository"


def admin_header_from_env() -> dict[str, str]:
    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        return {}
    return {os.environ.get(ADMIN_HEADER_ENV) or DEFAULT_ADMIN_HEADER: key}


# Reasons that mean "not now" rather than "never": resources that may free up.
_RETRYABLE_REASONS = re.compile(
    r"out of memory|insufficient memory|resource temporarily|cudaErrorMemoryAllocation|"
    r"failed to allocate|timeout|timed out",
    re.IGNORECASE,
)


class TritonControlError(Exception):
    """A control call failed. `model` is None for server-wide calls."""

    retryable: bool = False

    def __init__(self, message: str, *, model: str | None = None, detail: str = "") -> None:
        super().__init__(message + (f"\n{detail}" if detail else ""))
        self.model = model
        self.summary = message
        self.detail = detail


class PermanentTritonError(TritonControlError):
    """Will fail again until something changes (the entry's files or config, the server build)."""


class RetryableTritonError(TritonControlError):
    """Unreachable, timed out, or out of a resource that may free up: retry after a delay."""

    retryable = True


class ModelNotFound(PermanentTritonError):
    """The repository has no model of that name."""


class ServerUnreachable(RetryableTritonError):
    """No answer at the transport level: connection refused or reset, DNS, a dead process."""


class RequestTimedOut(RetryableTritonError):
    """The server took longer than the call's timeout (for a load: Triton may still be loading)."""


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str | None = None
    state: str | None = None  # READY, LOADING, UNLOADING, UNAVAILABLE; None = never loaded
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "READY"


@dataclass(frozen=True)
class ModelStatistics:
    """Per model (and version) figures from /v2/models/stats."""

    name: str
    version: str
    last_inference_ms: int  # ms since the epoch of the last request; 0 = never
    inference_count: int  # inferences (batch elements) served
    execution_count: int  # model executions (batches)
    success_count: int
    fail_count: int
    queue_ns: int  # summed time requests waited in the queue
    compute_infer_ns: int
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> executions

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelStatistics:
        stats = data.get("inference_stats", {})
        return cls(
            name=data["name"],
            version=str(data.get("version", "")),
            last_inference_ms=int(data.get("last_inference", 0)),
            inference_count=int(data.get("inference_count", 0)),
            execution_count=int(data.get("execution_count", 0)),
            success_count=int(stats.get("success", {}).get("count", 0)),
            fail_count=int(stats.get("fail", {}).get("count", 0)),
            queue_ns=int(stats.get("queue", {}).get("ns", 0)),
            compute_infer_ns=int(stats.get("compute_infer", {}).get("ns", 0)),
            batch_sizes={
                int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                for b in data.get("batch_stats", []) or []
            },
        )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One default TLS context for every client: building one (loading the CA bundle) costs
    about 60 ms of CPU, and the fleet driver opens a client per control call, so each look at a
    replica cost that much (the release of an evicted model was noticed that much later)."""
    return ssl.create_default_context()


class TritonControl:
    """Control-plane client for one Triton server. Use as `async with TritonControl(url) as c:`.

    Calls to one server should be serialized by the caller (Triton serializes repository calls
    itself: a slow load delays every other load and unload behind it)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        log_reader: Callable[[], str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        admin_header: Mapping[str, str] | None = None,
    ) -> None:
        """`admin_header`: sent on repository calls (default: from the environment, see
        admin_header_from_env)."""
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        self.base_url = base_url.rstrip("/")
        self.load_timeout_s = load_timeout_s
        self._timeout_s = timeout_s
        self._log_reader = log_reader
        self._admin_header = dict(admin_header_from_env() if admin_header is None else admin_header)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport, verify=_tls_context()
        )

    async def __aenter__(self) -> TritonControl:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- server ---------------------------------------------------------------------------------
    async def is_server_ready(self) -> bool:
        try:
            return (await self._http.get("/v2/health/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_until_ready(self, timeout_s: float) -> None:
        import asyncio  # noqa: PLC0415

        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await self.is_server_ready():
            if asyncio.get_running_loop().time() > deadline:
                raise RetryableTritonError(
                    f"Triton at {self.base_url} not ready after {timeout_s}s"
                )
            await asyncio.sleep(0.1)

    # -- repository -----------------------------------------------------------------------------
    async def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        response = await self._request("POST", "/v2/repository/index", json={"ready": ready_only})
        return [
            IndexEntry(
                name=row["name"],
                version=row.get("version"),
                state=row.get("state"),
                reason=row.get("reason", ""),
            )
            for row in response.json()
        ]

    async def load(
        self,
        model: str,
        *,
        config: Mapping[str, Any] | str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Load (or reload) `model` (`timeout_s`: this call's deadline, default load_timeout_s). `config` (a dict in Triton's JSON form, or its JSON text)
        overrides config.pbtxt; `files` ({"1/model.py": bytes}) upload a model's files and need a
        config. Returns when the model is ready; raises a classified error otherwise."""
        parameters: dict[str, str] = {}
        if config is not None:
            parameters["config"] = config if isinstance(config, str) else json.dumps(config)
        if files:
            if config is None:
                raise ValueError("uploading files needs a config override as well (Triton rule)")
            for path, content in files.items():
                parameters[f"file:{path}"] = base64.b64encode(content).decode()
        body = {"parameters": parameters} if parameters else None
        try:
            await self._request(
                "POST",
                f"/v2/repository/models/{model}/load",
                json=body,
                timeout=timeout_s or self.load_timeout_s,
                model=model,
            )
        except TritonControlError as exc:
            if exc.retryable:
                raise
            raise await self._explain_load_failure(model, exc.summary) from None
        log.info("loaded %s", model)

    async def unload(self, model: str, *, unload_dependents: bool = False) -> None:
        """Ask Triton to unload; it returns at once and the model leaves READY shortly after
        (in-flight requests finish first). `unload_dependents` also unloads an ensemble's steps."""
        body = {"parameters": {"unload_dependents": unload_dependents}}
        await self._request("POST", f"/v2/repository/models/{model}/unload", json=body, model=model)
        log.info("unload requested for %s", model)

    async def wait_until_unloaded(self, models: list[str], timeout_s: float = 30.0) -> None:
        """Until none of `models` is READY/UNLOADING (their memory is then released)."""
        import asyncio  # noqa: PLC0415

        deadline = asyncio.get_running_loop().time() + timeout_s
        names = set(models)
        while True:
            busy = [
                e.name
                for e in await self.index()
                if e.name in names and e.state in ("READY", "UNLOADING")
            ]
            if not busy:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RetryableTritonError(f"still unloading after {timeout_s}s: {busy}")
            await asyncio.sleep(0.05)

    # -- models ---------------------------------------------------------------------------------
    async def is_model_ready(self, model: str) -> bool:
        try:
            response = await self._http.get(f"/v2/models/{model}/ready")
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"Triton at {self.base_url} unreachable: {exc}") from exc
        return response.status_code == 200

    async def model_config(self, model: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v2/models/{model}/config", model=model)).json()

    async def statistics(self, model: str | None = None) -> list[ModelStatistics]:
        """Statistics of one model or (None) of every loaded model."""
        path = f"/v2/models/{model}/stats" if model else "/v2/models/stats"
        response = await self._request("GET", path, model=model)
        return [ModelStatistics.from_json(row) for row in response.json().get("model_stats", [])]

    async def pending_requests(self, metrics_url: str) -> dict[str, int]:
        """Requests queued per model right now (`nv_inference_pending_request_count`), from the
        metrics endpoint (a different port). Models with none are absent."""
        try:
            response = await self._http.get(metrics_url)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"metrics at {metrics_url} unreachable: {exc}") from exc
        pending: dict[str, int] = {}
        for match in re.finditer(
            r'^nv_inference_pending_request_count\{[^}]*model="([^"]+)"[^}]*\}\s+(\S+)',
            response.text,
            re.MULTILINE,
        ):
            count = int(float(match.group(2)))
            if count:
                pending[match.group(1)] = pending.get(match.group(1), 0) + count
        return pending

    # -- plumbing -------------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: float | None = None,
        model: str | None = None,
    ) -> httpx.Response:
        kwargs: dict[str, Any] = {}
        if json is not None:
            kwargs["json"] = json
        if timeout is not None:
            kwargs["timeout"] = timeout
        if self._admin_header and path.startswith(REPOSITORY_PATH):
            kwargs["headers"] = self._admin_header
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise RequestTimedOut(
                f"{method} {path} on {self.base_url} timed out after {timeout or self._timeout_s}s",
                model=model,
            ) from exc
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"Triton at {self.base_url} unreachable ({exc.__class__.__name__}: {exc})",
                model=model,
            ) from exc
        if response.status_code < 400:
            return response
        message = _error_message(response)
        if response.status_code in (502, 503, 504):
            raise RetryableTritonError(f"{method} {path}: {message}", model=model)
        if "not found" in message or "is not available" in message or "unknown model" in message:
            raise ModelNotFound(f"{method} {path}: {message}", model=model)
        raise PermanentTritonError(f"{method} {path}: {message}", model=model)

    async def _explain_load_failure(self, model: str, message: str) -> TritonControlError:
        details = []
        in_index = True
        try:
            entries = [e for e in await self.index() if e.name == model]
            in_index = bool(entries)
            details.extend(f"repository index: {e.state}: {e.reason}" for e in entries if e.reason)
        except TritonControlError:
            pass
        if self._log_reader is not None:
            details.extend(
                f"server log: {line}" for line in _log_lines_about(model, self._log_reader())
            )
        detail = "\n".join(details)
        if not in_index or "model not found in any model repository" in detail:
            return ModelNotFound(
                f"model {model!r} is not in the model repository; check the name "
                "(`shoal repo list DIR` shows what is there)",
                model=model,
                detail=detail,
            )
        kind = (
            RetryableTritonError
            if _RETRYABLE_REASONS.search(f"{message} {detail}")
            else (PermanentTritonError)
        )
        return kind(f"loading {model!r} failed: {message}", model=model, detail=detail)


def _log_lines_about(model: str, log_text: str, limit: int = 6) -> list[str]:
    """Error lines of a Triton log that name `model`, with the parser message that Triton prints
    on the line before ("Error parsing text-format ...: 4:42: Unknown enumeration value")."""
    lines = log_text[-200_000:].splitlines()
    names = (f"'{model}'", f"/{model}/", f" {model}:", f"'{model}:")
    found: list[str] = []
    for i, line in enumerate(lines):
        if not any(n in line for n in names):
            continue
        lowered = line.lower()
        if not (line.startswith("E") or "fail" in lowered or "error" in lowered):
            continue
        if i > 0 and "libprotobuf ERROR" in lines[i - 1]:
            found.append(lines[i - 1].split("] ", 1)[-1].strip())
        found.append(line.strip())
    return found[-limit:]


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text or f"HTTP {response.status_code}"
