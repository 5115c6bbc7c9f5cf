"""The router's errors: domain exceptions named for what went wrong, and the ONE table that maps
each kind to an HTTP status, a gRPC code, and an OpenAI error type. The HTTP, gRPC and OpenAI
layers read this table; nothing else decides a status.

Errors a replica (Triton) answers with, e.g. a wrong input tensor, are not router errors: they pass
through to the client untouched, with Triton's own status and message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import grpc


class ErrorKind(StrEnum):
    """The `code` of an OpenAI-style error body, and the key of ERROR_TABLE."""

    MODEL_NOT_FOUND = "model_not_found"  # no such model: the message lists the known ones
    INVALID_MODEL_NAME = "invalid_model_name"  # path characters or an empty name
    INVALID_REQUEST = "invalid_request"  # malformed JSON, wrong lengths, garbage gRPC bytes
    BODY_TOO_LARGE = "body_too_large"
    NOT_SERVED = "not_served"  # Triton's repository/shared-memory/admin APIs, unknown paths
    HOLD_DEADLINE = "model_not_ready"  # the model was not ready before the request's deadline
    HOLD_OVERFLOW = "hold_queue_full"  # too many requests already held for the model
    MODEL_CANNOT_LOAD = "model_cannot_load"  # a permanent placement error: waiting will not help
    REPLICA_UNREACHABLE = "replica_unreachable"  # every try failed to connect / was reset
    UPSTREAM_TIMEOUT = "upstream_timeout"  # the replica did not answer within the deadline


@dataclass(frozen=True)
class ErrorResponse:
    http_status: int
    grpc_code: grpc.StatusCode
    openai_type: str
    retry_after: bool  # 503s say when to come back; other kinds should not be retried blindly


# One table (STYLE.md). A model that can never load is a 500 / FAILED_PRECONDITION, not a 503:
# 503 and UNAVAILABLE invite automatic retries (urllib3, Envoy, gRPC retry policies), which
# would only hammer a placement that no wait will fix.
ERROR_TABLE: dict[ErrorKind, ErrorResponse] = {
    ErrorKind.MODEL_NOT_FOUND: ErrorResponse(
        404, grpc.StatusCode.NOT_FOUND, "invalid_request_error", False
    ),
    ErrorKind.INVALID_MODEL_NAME: ErrorResponse(
        400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error", False
    ),
    ErrorKind.INVALID_REQUEST: ErrorResponse(
        400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error", False
    ),
    ErrorKind.BODY_TOO_LARGE: ErrorResponse(
        413, grpc.StatusCode.RESOURCE_EXHAUSTED, "invalid_request_error", False
    ),
    ErrorKind.NOT_SERVED: ErrorResponse(
        404, grpc.StatusCode.UNIMPLEMENTED, "invalid_request_error", False
    ),
    ErrorKind.HOLD_DEADLINE: ErrorResponse(503, grpc.StatusCode.UNAVAILABLE, "server_error", True),
    ErrorKind.HOLD_OVERFLOW: ErrorResponse(503, grpc.StatusCode.UNAVAILABLE, "server_error", True),
    ErrorKind.MODEL_CANNOT_LOAD: ErrorResponse(
        500, grpc.StatusCode.FAILED_PRECONDITION, "server_error", False
    ),
    ErrorKind.REPLICA_UNREACHABLE: ErrorResponse(
        503, grpc.StatusCode.UNAVAILABLE, "server_error", True
    ),
    ErrorKind.UPSTREAM_TIMEOUT: ErrorResponse(
        504, grpc.StatusCode.DEADLINE_EXCEEDED, "server_error", False
    ),
}


class RouterError(Exception):
    """A request the router refuses or gives up on; `kind` decides its status everywhere."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param  # the request field at fault (OpenAI error bodies)

    @property
    def response(self) -> ErrorResponse:
        return ERROR_TABLE[self.kind]


class ReplicaUnreachable(Exception):
    """An attempt could not reach its replica (refused, reset, closed): try another one.
    Inference is idempotent, so a request whose connection was reset may be sent again."""


class ModelMissingOnReplica(Exception):
    """The replica answered "unknown model" / "no available versions": placement is stale, so the
    request is held again until placement changes."""


class ReplicaRefused(Exception):
    """A replica answered a request the router built itself (OpenAI-style endpoints) with an
    error: Triton's status and message, returned to the client in the OpenAI error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def replica_failure(exc: ReplicaUnreachable | ModelMissingOnReplica) -> RouterError:
    """A call that goes to one replica without the core's retries (statistics) and fails."""
    return RouterError(ErrorKind.REPLICA_UNREACHABLE, f"the replica failed: {exc}")
