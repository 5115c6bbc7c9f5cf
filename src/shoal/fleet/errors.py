"""The fleet driver's errors, by what a caller does about them. Each layer above keeps the type
(the operator maps it to a condition, `shoal serve` and the router to a status code) instead of
matching message text.

- ReplicaUnreachable: the replica did not answer (restarting, network): retry later.
- LoadTimedOut: a load outlived its deadline; the replica's other models are unaffected; retry
  with backoff (a step whose initialize hangs, a model far larger than its manifest says).
- LoadFailed: Triton answered the load with an error (its message kept); `retryable` when the
  cause may pass (out of memory), else fix the entry.
- EntryInvalid: the entry fails `shoal repo check`; never handed to Triton.
- PlacementRefused: no room within the budget now (the reason says why and what to do).
"""

from __future__ import annotations


class FleetError(RuntimeError):
    """Base of the driver's errors. `reason` is a CamelCase word for conditions and metrics."""

    reason = "FleetError"


class ReplicaUnreachable(FleetError):
    reason = "ReplicaUnreachable"

    def __init__(self, replica: str, detail: str) -> None:
        super().__init__(f"replica {replica} did not answer: {detail}")
        self.replica = replica


class LoadFailed(FleetError):
    reason = "LoadFailed"

    def __init__(self, model: str, replica: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"Triton on {replica} failed to load {model!r}: {message}")
        self.model = model
        self.replica = replica
        self.triton_message = message
        self.retryable = retryable


class LoadTimedOut(FleetError):
    reason = "LoadTimeout"

    def __init__(self, model: str, replica: str, timeout_s: float) -> None:
        super().__init__(
            f"loading {model!r} on {replica} did not finish within {timeout_s:.0f} s (the load "
            "deadline); the replica's other models are unaffected. A python step whose "
            "initialize hangs, or an entry much larger than its manifest says, does this: check "
            "the entry (shoal repo check) and Triton's log; retried with backoff"
        )
        self.model = model
        self.replica = replica
        self.timeout_s = timeout_s


class EntryInvalid(FleetError):
    reason = "EntryInvalid"

    def __init__(self, entry: str, problems: list[str]) -> None:
        super().__init__(
            f"model {entry!r} is not loaded because its repository entry is incomplete or "
            f"inconsistent: {'; '.join(problems)}. Re-export it (shoal export), or fix the "
            "files; `shoal repo check DIR` lists every problem"
        )
        self.entry = entry
        self.problems = problems


class PlacementRefused(FleetError):
    reason = "NoCapacity"
