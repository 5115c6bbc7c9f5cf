"""The registry of architecture adapters: `@register` on each family's class, `detect_adapter` to
pick one for a checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.exporter.errors import ExportError

if TYPE_CHECKING:
    from shoal.exporter.adapters.base import Adapter
    from shoal.exporter.checkpoint import Checkpoint

ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no family name")
    if cls.name in ADAPTERS and ADAPTERS[cls.name] is not cls:
        raise TypeError(f"family {cls.name!r} is registered twice ({ADAPTERS[cls.name].__name__})")
    ADAPTERS[cls.name] = cls
    return cls


def supported_families() -> str:
    """One line per family: name and the model types it reads."""
    return "; ".join(
        f"{name} ({', '.join(cls.model_types)})" for name, cls in sorted(ADAPTERS.items())
    )


def detect_adapter(
    checkpoint: Checkpoint, family: str | None = None, task: str | None = None
) -> Adapter:
    """The family of `family`, else the first that matches the checkpoint and, when `task` is
    asked for, exports it (a head family steps aside for the backbone: `--task embed` on a
    token classifier exports its encoder)."""
    if family is not None:
        if family not in ADAPTERS:
            raise ExportError(
                f"unknown family {family!r}; supported: {', '.join(sorted(ADAPTERS))}"
            )
        cls = ADAPTERS[family]
        if checkpoint.model_type not in cls.model_types:
            raise ExportError(
                f"family {family!r} reads model types {list(cls.model_types)}, but "
                f"{checkpoint.path / 'config.json'} says {checkpoint.model_type!r}"
            )
        return cls(checkpoint)
    ranked = sorted(ADAPTERS.values(), key=lambda c: -c.detection_priority)
    matching = [cls for cls in ranked if cls.matches(checkpoint)]
    for cls in matching:
        if task is None or task in {t.value for t in cls.tasks}:
            return cls(checkpoint)
    if matching:  # none exports the task: the best match says so
        return matching[0](checkpoint)
    raise ExportError(
        f"unsupported architecture: {checkpoint.path / 'config.json'} has model_type "
        f"{checkpoint.model_type!r} and architectures {checkpoint.architectures}. Supported "
        f"families (model types): {supported_families()}"
    )
