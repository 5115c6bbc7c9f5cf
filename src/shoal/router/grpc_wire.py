"""Reading the model name and version out of a serialized KServe v2 gRPC request without parsing
the rest (tensors stay bytes). Every model-scoped request of `inference.GRPCInferenceService`
(ModelInferRequest, ModelMetadataRequest, ModelConfigRequest, ModelReadyRequest,
ModelStatisticsRequest) has the name as field 1 and the version as field 2, both strings."""

from __future__ import annotations

from shoal.router.errors import ErrorKind, RouterError

NAME_FIELD, VERSION_FIELD = 1, 2


class _Malformed(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def read_model_fields(message: bytes) -> tuple[str, str]:
    """(model_name, model_version) of a request; RouterError(INVALID_REQUEST) for bytes that
    are not such a protobuf message or that name no model."""
    try:
        fields = _scan(message)
    except (_Malformed, UnicodeDecodeError) as exc:
        raise RouterError(
            ErrorKind.INVALID_REQUEST,
            f"the request is not a valid KServe v2 protobuf message ({exc}); send it with a "
            "KServe v2 / Triton gRPC client",
        ) from None
    name = fields.get(NAME_FIELD, "")
    if not name:
        raise RouterError(
            ErrorKind.INVALID_REQUEST, "the request names no model (model_name is empty)", "model"
        )
    return name, fields.get(VERSION_FIELD, "")


def _scan(message: bytes) -> dict[int, str]:
    found: dict[int, str] = {}
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(message, pos)
            if pos + length > end:
                raise _Malformed(f"field {field} runs past the end of the message")
            if field in (NAME_FIELD, VERSION_FIELD):
                found[field] = message[pos : pos + length].decode("utf-8")
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise _Malformed(f"wire type {wire_type} of field {field}")
    if pos != end:
        raise _Malformed("truncated message")
    return found
