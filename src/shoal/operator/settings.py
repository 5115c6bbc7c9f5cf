"""Operator settings read from the environment once, when the handlers are imported.

kopf timers take their interval at decoration time, so these are module constants; `shoal
operator run` sets the variables before it imports the handlers. A variable that cannot be read
keeps its default and is listed in PROBLEMS; `check()` (called by `shoal operator run` and at
operator startup) turns them into one UserError, so a typo never starts an operator silently.
"""

from __future__ import annotations

import os

from shoal.errors import UserError
from shoal.fleet.triton_control import ADMIN_HEADER_ENV, DEFAULT_ADMIN_HEADER
from shoal.operator import defaults
from shoal.operator.defaults import parse_seconds

PROBLEMS: list[str] = []


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse_seconds(name, raw)
    except ValueError as exc:
        PROBLEMS.append(str(exc))
        return default


def check() -> None:
    if PROBLEMS:
        raise UserError("; ".join(PROBLEMS))


# How often each InferenceModel's placement is compared with its replicas and repaired.
DRIFT_INTERVAL_S = _seconds("SHOAL_OPERATOR_DRIFT_INTERVAL_S", defaults.DRIFT_INTERVAL_S)
# How often each InferencePool's status (ready replicas, phase) is refreshed.
POOL_STATUS_INTERVAL_S = _seconds(
    "SHOAL_OPERATOR_POOL_STATUS_INTERVAL_S", defaults.POOL_STATUS_INTERVAL_S
)
# How often each pool's replicas are asked which models are READY, so that a model's status
# follows a restarted replica or a model unloaded behind the operator (placement_observer.py).
OBSERVE_INTERVAL_S = _seconds("SHOAL_OPERATOR_OBSERVE_INTERVAL_S", defaults.OBSERVE_INTERVAL_S)
# Retries after a failed load or an unreachable replica: base * 2**attempt, capped.
RETRY_BASE_S = _seconds("SHOAL_OPERATOR_RETRY_BASE_S", defaults.RETRY_BASE_S)
RETRY_MAX_S = _seconds("SHOAL_OPERATOR_RETRY_MAX_S", defaults.RETRY_MAX_S)
# How long a deleted InferenceModel waits for replicas that do not answer before it goes anyway.
UNLOAD_DEADLINE_S = _seconds("SHOAL_OPERATOR_UNLOAD_DEADLINE_S", defaults.UNLOAD_DEADLINE_S)
# Peering: an operator that stops sending keep-alives counts as gone after this long, and a
# waiting operator takes over.
PEERING_LIFETIME_S = int(_seconds("SHOAL_OPERATOR_PEERING_LIFETIME_S", defaults.PEERING_LIFETIME_S))

# The shoal router's KEDA external scaler (host:port, e.g. shoal-router.shoal-system:8003): every
# pool that scales gets an `external-push` trigger to it (a pool's
# spec.autoscaling.routerScalerAddress overrides it). Unset: no router trigger by default.
ROUTER_SCALER_ADDRESS = os.environ.get("SHOAL_OPERATOR_ROUTER_SCALER") or None


def load_timeout_s() -> float | None:
    """SHOAL_LOAD_TIMEOUT_S: one deadline for every load; unset, each entry's deadline derives
    from its size (shoal.fleet.driver.default_load_deadline). Read at operator start-up."""
    raw = os.environ.get("SHOAL_LOAD_TIMEOUT_S")
    return _seconds("SHOAL_LOAD_TIMEOUT_S", 0.0) if raw else None


# Images an InferencePool may run (spec.triton.image), comma-separated; an entry ending in `*` is
# a prefix. Unset or empty: any image. The Helm chart sets it from operator.allowedImages.
ALLOWED_IMAGES_ENV = "SHOAL_OPERATOR_ALLOWED_IMAGES"


def allowed_images() -> tuple[str, ...]:
    """The image allow-list, read when a pool is applied (so tests can set it per run)."""
    raw = os.environ.get(ALLOWED_IMAGES_ENV) or ""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


# The Secret (in each pool's namespace, key `key`) that holds the value of Triton's
# restricted-API header; pool pods get it as an environment variable. Unset: pools run Triton
# with an unrestricted repository API (as before the chart). The header's name and the operator's
# own copy of the value are read by shoal.fleet.triton_control (SHOAL_TRITON_ADMIN_HEADER/_KEY).
TRITON_ADMIN_SECRET = os.environ.get("SHOAL_TRITON_ADMIN_SECRET") or None
TRITON_ADMIN_HEADER = os.environ.get(ADMIN_HEADER_ENV) or DEFAULT_ADMIN_HEADER

FINALIZER = "shoal.dev/unload-models"
ANNOTATION_PREFIX = "shoal.dev"


def retry_delay(attempt: int) -> float:
    return min(RETRY_BASE_S * 2 ** max(attempt, 0), RETRY_MAX_S)
