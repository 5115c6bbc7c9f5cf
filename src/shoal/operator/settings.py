"""Operator settings read from the environment once, when the handlers are imported.

kopf timers take their interval at decoration time, so these are module constants; `shoal
operator run` sets the variables before it imports the handlers.
"""

from __future__ import annotations

import os

from shoal.fleet.triton_control import ADMIN_HEADER_ENV, DEFAULT_ADMIN_HEADER


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


# How often each InferenceModel's placement is compared with its replicas and repaired.
DRIFT_INTERVAL_S = _seconds("SHOAL_OPERATOR_DRIFT_INTERVAL_S", 30.0)
# How often each InferencePool's status (ready replicas, phase) is refreshed.
POOL_STATUS_INTERVAL_S = _seconds("SHOAL_OPERATOR_POOL_STATUS_INTERVAL_S", 15.0)
# Retries after a failed load or an unreachable replica: base * 2**attempt, capped.
RETRY_BASE_S = _seconds("SHOAL_OPERATOR_RETRY_BASE_S", 5.0)
RETRY_MAX_S = _seconds("SHOAL_OPERATOR_RETRY_MAX_S", 300.0)


def load_timeout_s() -> float | None:
    """SHOAL_LOAD_TIMEOUT_S: one deadline for every load; unset, each entry's deadline derives
    from its size (shoal.fleet.driver.default_load_deadline). Read at operator start-up."""
    raw = os.environ.get("SHOAL_LOAD_TIMEOUT_S")
    return _seconds("SHOAL_LOAD_TIMEOUT_S", 0.0) if raw else None


# The shoal router's KEDA external scaler (host:port, e.g. shoal-router.shoal-system:8003): every
# pool that scales gets an `external-push` trigger to it (a pool's
# spec.autoscaling.routerScalerAddress overrides it). Unset: no router trigger by default.
ROUTER_SCALER_ADDRESS = os.environ.get("SHOAL_OPERATOR_ROUTER_SCALER") or None

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
