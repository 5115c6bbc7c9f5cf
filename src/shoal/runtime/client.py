"""Calling served models with plain tritonclient: what `shoal embed`, `shoal rerank` and
`shoal quickstart` send (the same calls an application makes; tensor names from shoal.contract).

Each call first reads the model's config (`describe`): its task, from its output names, so that a
call on the wrong kind of model says which command fits; and its max batch size, so that more
texts than that go as several requests whose answers are joined in order.

numpy and tritonclient are imported inside the calls: the command line reads DEFAULT_URLS for its
help, and `shoal --help` stays fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.contract import (
    INPUT_LABELS,
    INPUT_QUERY,
    INPUT_TEXT,
    INPUT_TEXT_TYPE,
    OUTPUT_EMBEDDING,
    OUTPUT_SCORE,
    OUTPUTS_BY_TASK,
    Task,
)
from shoal.runtime.ports import GRPC_PORT, HTTP_PORT

if TYPE_CHECKING:
    import numpy as np

# Where a client looks when given no URL: Triton's standard ports, where `shoal serve` listens.
DEFAULT_URLS = {"http": f"http://localhost:{HTTP_PORT}", "grpc": f"localhost:{GRPC_PORT}"}
PROTOCOL_NAMES = {"http": "HTTP", "grpc": "gRPC"}
CONNECT_TIMEOUT_S = 10.0  # HTTP: opening the connection; an answer may take a cold load longer
LIVENESS_TIMEOUT_S = 5.0  # the first question, "is a server there?", is answered at once or never

# The command that calls each task's entries, as a person types it.
COMMAND_FOR_TASK = {
    Task.EMBED: "shoal embed MODEL TEXT...",
    Task.MULTI: "shoal embed MODEL TEXT...",
    Task.IMAGE_TEXT: "shoal embed MODEL TEXT...",  # the text entry (images: tritonclient)
    Task.RERANK: "shoal rerank MODEL QUERY DOC...",
}


class ModelCallError(RuntimeError):
    """The server refused or failed a request (the message carries Triton's own words)."""


class ServerUnreachable(ModelCallError):
    """Nothing answers as a KServe v2 server at the URL."""


class WrongTask(ModelCallError):
    """The model answers another task than the call needs; the message names what fits."""


class InvalidText(ModelCallError):
    """A text that cannot be sent as UTF-8 (found before anything is sent)."""


@dataclass(frozen=True)
class ModelInterface:
    """What a call needs to know of a served model, read from its config."""

    name: str
    outputs: tuple[str, ...]
    max_batch_size: int  # 0: Triton does not batch the model: every row goes in one request
    inputs: tuple[str, ...] = ()

    @property
    def task(self) -> Task | None:
        """The shoal task whose outputs these are; None for a model that is not a shoal entry.
        extract and extract-zero-shot share ENTITIES: the LABELS input tells them apart."""
        matches = [t for t, names in OUTPUTS_BY_TASK.items() if set(names) == set(self.outputs)]
        if len(matches) > 1:
            zero_shot = INPUT_LABELS in self.inputs
            matches = [t for t in matches if (t is Task.EXTRACT_ZERO_SHOT) == zero_shot]
        return matches[0] if matches else None


def _module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module  # noqa: PLC0415
    elif protocol == "grpc":
        import tritonclient.grpc as module  # noqa: PLC0415
    else:
        raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
    return module


def _texts(module: Any, name: str, texts: list[str]) -> Any:
    import numpy as np  # noqa: PLC0415

    tensor = module.InferInput(name, [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t] for t in utf8(name, texts)], dtype=object))
    return tensor


def utf8(name: str, texts: list[str]) -> list[bytes]:
    """The texts as UTF-8; InvalidText names the row that has no UTF-8 form (a lone surrogate,
    as Python makes of bytes that were not UTF-8 on a command line)."""
    encoded = []
    for row, text in enumerate(texts):
        try:
            encoded.append(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidText(
                f"{name}[{row}] is not valid UTF-8 text (character {exc.start} is "
                f"{text[exc.start]!r}); give texts in UTF-8"
            ) from None
    return encoded


def strip_scheme(url: str) -> str:
    """tritonclient wants host:port."""
    return url.split("://", 1)[-1].rstrip("/")


def connect(url: str | None = None, protocol: str = "http") -> Any:
    """A client for `url`, by default `shoal serve`'s port for the protocol (DEFAULT_URLS)."""
    module = _module(protocol)
    address = strip_scheme(url or DEFAULT_URLS[protocol])
    if protocol == "http":
        return module.InferenceServerClient(address, connection_timeout=CONNECT_TIMEOUT_S)
    return module.InferenceServerClient(address)


def ensure_live(url: str | None, protocol: str) -> None:
    """Raise ServerUnreachable, saying what was tried and what to do, unless a KServe v2 server
    answers at `url` (default: DEFAULT_URLS) within LIVENESS_TIMEOUT_S."""
    tried = url or DEFAULT_URLS[protocol]
    try:
        live = _probe_live(_module(protocol), strip_scheme(tried), protocol)
        reason = "" if live else "it answered, but not as a live KServe v2 server"
    # Any failure of this one probe means the same to the caller: nothing usable answers there.
    except Exception as exc:  # noqa: BLE001
        reason = _failure_reason(exc)
    if not reason:
        return
    raise ServerUnreachable(
        f"no KServe v2 server answers over {PROTOCOL_NAMES[protocol]} at {tried}: {reason}. "
        "Start one with `shoal serve REPOSITORY`, or pass --url with the address of a running "
        f"one (HTTP and gRPC have their own ports; `shoal serve` listens on {DEFAULT_URLS['http']}"
        f" and {DEFAULT_URLS['grpc']})"
    )


def _probe_live(module: Any, address: str, protocol: str) -> bool:
    if protocol == "http":
        probe = module.InferenceServerClient(
            address, connection_timeout=LIVENESS_TIMEOUT_S, network_timeout=LIVENESS_TIMEOUT_S
        )
        try:
            return probe.is_server_live()
        finally:
            probe.close()
    probe = module.InferenceServerClient(address)
    try:
        return probe.is_server_live(client_timeout=LIVENESS_TIMEOUT_S)
    finally:
        probe.close()


def _failure_reason(exc: Exception) -> str:
    """The first line of what went wrong, in the words of whoever said it."""
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    timed_out = isinstance(exc, TimeoutError)
    if isinstance(exc, InferenceServerException):  # gRPC: UNAVAILABLE, DEADLINE_EXCEEDED
        timed_out = exc.status() == "StatusCode.DEADLINE_EXCEEDED"
        text = exc.message() or str(exc.status())
    elif isinstance(exc, OSError):  # refused, unknown host
        text = exc.strerror or str(exc)
    else:  # an answer the HTTP client could not parse
        text = f"its answer is not HTTP ({exc})"
    if timed_out:
        return f"no answer within {LIVENESS_TIMEOUT_S:.0f} s"
    return (text.strip() or type(exc).__name__).splitlines()[0]


def wait_until_ready(client: Any, model: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.is_model_ready(model):
        if time.monotonic() > deadline:
            raise ModelCallError(f"model {model!r} not ready after {timeout_s:.0f}s")
        time.sleep(0.1)


def describe(client: Any, model: str) -> ModelInterface:
    """The model's outputs and max batch size, from its config (HTTP: JSON; gRPC: protobuf)."""
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    try:
        config = client.get_model_config(model)
    except InferenceServerException as exc:
        raise ModelCallError(f"model {model!r}: {exc.message()}") from exc
    if isinstance(config, dict):
        outputs = tuple(o["name"] for o in config.get("output", []))
        inputs = tuple(i["name"] for i in config.get("input", []))
        return ModelInterface(model, outputs, int(config.get("max_batch_size", 0)), inputs)
    config = config.config
    return ModelInterface(
        model,
        tuple(o.name for o in config.output),
        config.max_batch_size,
        tuple(i.name for i in config.input),
    )


def require_task(interface: ModelInterface, output: str, command: str) -> None:
    """Raise WrongTask, naming the command that fits, unless the model answers `output`."""
    if output in interface.outputs:
        return
    task, name = interface.task, interface.name
    answers = ", ".join(interface.outputs) or "nothing"
    if task is None:
        raise WrongTask(
            f"model {name!r} is not a shoal entry (it answers {answers}); `{command}` needs a "
            f"model that answers {output}"
        )
    fits = COMMAND_FOR_TASK.get(task)
    advice = (
        f"use `{fits.replace('MODEL', name)}`"
        if fits
        else "no shoal command calls it: call it with tritonclient (docs/tasks.md)"
    )
    raise WrongTask(
        f"model {name!r} serves the {task.value} task (it answers {answers}, not {output}); "
        + advice
    )


def batches(count: int, max_batch_size: int) -> list[slice]:
    """Row ranges of at most `max_batch_size` rows (all rows in one when 0), at least one."""
    size = max_batch_size if max_batch_size > 0 else max(count, 1)
    return [slice(start, start + size) for start in range(0, max(count, 1), size)]


def embed(
    client: Any,
    model: str,
    texts: list[str],
    *,
    protocol: str = "http",
    text_type: str | None = None,
    interface: ModelInterface | None = None,
) -> np.ndarray:
    """Dense vectors [len(texts), dims], in as many requests as the model's batch size needs."""
    interface = interface or describe(client, model)
    require_task(interface, OUTPUT_EMBEDDING, "shoal embed")
    module = _module(protocol)
    outputs = [module.InferRequestedOutput(OUTPUT_EMBEDDING)]
    parts = []
    for rows in batches(len(texts), interface.max_batch_size):
        inputs = [_texts(module, INPUT_TEXT, texts[rows])]
        if text_type:
            inputs.append(_texts(module, INPUT_TEXT_TYPE, [text_type] * len(texts[rows])))
        parts.append(_infer(client, model, inputs, outputs).as_numpy(OUTPUT_EMBEDDING))
    return _joined(parts)


def rerank(
    client: Any,
    model: str,
    query: str,
    documents: list[str],
    *,
    protocol: str = "http",
    interface: ModelInterface | None = None,
) -> np.ndarray:
    """One relevance score per document, in as many requests as the model's batch size needs."""
    interface = interface or describe(client, model)
    require_task(interface, OUTPUT_SCORE, "shoal rerank")
    module = _module(protocol)
    outputs = [module.InferRequestedOutput(OUTPUT_SCORE)]
    parts = []
    for rows in batches(len(documents), interface.max_batch_size):
        chunk = documents[rows]
        inputs = [
            _texts(module, INPUT_QUERY, [query] * len(chunk)),
            _texts(module, INPUT_TEXT, chunk),
        ]
        parts.append(_infer(client, model, inputs, outputs).as_numpy(OUTPUT_SCORE).reshape(-1))
    return _joined(parts)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    import numpy as np  # noqa: PLC0415

    return np.concatenate(parts)


def _infer(client: Any, model: str, inputs: list, outputs: list) -> Any:
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    try:
        return client.infer(model, inputs, outputs=outputs)
    except InferenceServerException as exc:
        raise ModelCallError(f"model {model!r}: {exc.message()}") from exc
