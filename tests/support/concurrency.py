"""Run calls at once from threads and collect what each returned (for "concurrent requests get
their own answers" tests against a real server)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def call_concurrently(call: Callable[[int], Any], count: int, timeout: float = 120) -> list[Any]:
    """`call(i)` for i in range(count), each in its own thread, started together; the results in
    order. Raises the first error a call raised, or TimeoutError if one did not finish."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = call(i)
        except BaseException as exc:  # noqa: BLE001  re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    if errors:
        raise errors[0]
    if len(results) != count:
        raise TimeoutError(f"{count - len(results)} of {count} calls did not finish in {timeout} s")
    return [results[i] for i in range(count)]
