"""Status conditions (the Kubernetes convention: type, status, reason, message, times).

Pure helpers used by handlers.py to write `status.conditions` without churning
`lastTransitionTime` when nothing changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    ok: bool | None,
    reason: str,
    message: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with condition `type_` set; its transition time moves only when its status does.
    `ok` None means Unknown."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    result = [dict(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339() if changed else previous["lastTransitionTime"],
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return sorted(result, key=lambda c: c["type"])


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def status_changes(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """Only the status fields whose value differs (a status patch that changes nothing would
    still bump resourceVersion and wake every watcher)."""
    return {key: value for key, value in desired.items() if current.get(key) != value}
