"""The one size grammar of shoal: memory sizes in CLI flags, catalogs and custom resources.

Accepts Kubernetes quantities ("16Gi", "1500M", "2e9", 2000000000) and the byte-unit spellings
people type on a command line ("2GiB", "512MB", "1.5 gb"). Used by `shoal serve --memory-budget`,
the catalog, and the operator's spec readers (shoal.operator.specs). Pure, no I/O.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# Status fields and the scheduler hold sizes as signed 64-bit integers.
MAX_BYTES = 2**63 - 1

_MULTIPLIERS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15, "e": 10**18, "eb": 10**18,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
    "ti": 2**40, "tib": 2**40, "pi": 2**50, "pib": 2**50, "ei": 2**60, "eib": 2**60,
}  # fmt: skip
_SIZE = re.compile(
    r"^\s*\+?(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<exponent>[eE][-+]?\d+)?\s*(?P<unit>[A-Za-z]*)\s*$"
)
_EXAMPLES = "e.g. 2GiB, 512Mi, 1.5GB, 16Gi or a whole number of bytes"


class SizeError(ValueError):
    """A size that cannot be read; the message names the input and how to write one."""


def parse_size(value: int | str, what: str = "size") -> int:
    """`value` as a whole number of bytes (fractions round up, as Kubernetes rounds quantities).

    Kubernetes suffixes (Ki Mi Gi Ti Pi Ei, k M G T P E) and byte units (KiB, MB, GB, ...) are
    read case-insensitively, except a lone "m": Kubernetes reads it as milli, so it is refused
    rather than guessed."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SizeError(f"{what}={value!r} is not a size; write {_EXAMPLES}")
    if isinstance(value, int):
        return _bounded(value, value, what)
    match = _SIZE.match(value)
    if not match:
        raise SizeError(f"{what}={value!r} is not a size; write {_EXAMPLES}")
    unit = match["unit"]
    if unit == "m":
        raise SizeError(
            f"{what}={value!r}: 'm' means milli in Kubernetes quantities; "
            "write M or MB for megabytes, Mi or MiB for mebibytes"
        )
    if unit.lower() not in _MULTIPLIERS or (match["exponent"] and unit):
        raise SizeError(
            f"{what}={value!r}: unknown suffix {unit!r}; use one of Ki Mi Gi Ti, k M G T, "
            f"KiB MiB GiB, KB MB GB ({_EXAMPLES})"
        )
    try:
        amount = Decimal(match["number"] + (match["exponent"] or ""))
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise SizeError(f"{what}={value!r} is not a number; write {_EXAMPLES}") from None
    return _bounded(math.ceil(amount * _MULTIPLIERS[unit.lower()]), value, what)


def _bounded(size: int, value: int | str, what: str) -> int:
    if size < 0:
        raise SizeError(f"{what}={value!r} is negative; write {_EXAMPLES}")
    if size > MAX_BYTES:
        raise SizeError(
            f"{what}={value!r} is more than {format_size(MAX_BYTES)} (the largest size "
            "a 64-bit status field holds); write a real memory size, e.g. 16Gi"
        )
    return size


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
