"""The exporter's error type: a message a person can act on (what was wrong, with which file or
option, and what to do). `shoal export` prints it without a traceback."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that cannot proceed; nothing has been written to the repository."""


class ParityError(ExportError):
    """The exported graph does not match the PyTorch reference; the message has the figures."""
