"""Which replica gets a request: pure functions, unit-tested on their own."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from shoal.fleet.replica import Replica
from shoal.router.errors import ErrorKind, RouterError

# Triton model names as shoal writes them; anything else (a slash, `..`, a backslash, spaces)
# could address a different path on the replica and is refused before routing.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")


def check_model_name(model: str) -> None:
    if not MODEL_NAME.fullmatch(model) or ".." in model:
        raise RouterError(
            ErrorKind.INVALID_MODEL_NAME,
            f"model name {model!r} is not valid: use letters, digits, '_', '-' and '.' "
            "(no path characters), starting with a letter or digit",
            param="model",
        )


def choose_replica(
    ready: Sequence[Replica],
    in_flight: Mapping[str, int],
    excluded: Collection[str] = (),
    turn: int = 0,
) -> Replica | None:
    """The ready replica with the fewest requests in flight, skipping `excluded` names; ties go
    round-robin by `turn` so equal replicas share the load. None when no replica is left."""
    candidates = [r for r in ready if r.name not in excluded]
    if not candidates:
        return None
    offset = turn % len(candidates)
    rotated = candidates[offset:] + candidates[:offset]
    return min(rotated, key=lambda replica: in_flight.get(replica.name, 0))


def unknown_model_message(model: str, known: Sequence[str], limit: int = 20) -> str:
    names = sorted(known)
    listed = ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )
    return f"model {model!r} is not served here; known models: {listed or 'none'}"
