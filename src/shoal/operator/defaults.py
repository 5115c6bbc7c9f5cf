"""Default operator settings and how a setting is read, without reading the environment: `shoal
operator run --help` shows these, and shoal.operator.settings reads the environment once, when the
handlers load (after `shoal operator run` has set it from its flags)."""

DRIFT_INTERVAL_S = 30.0
POOL_STATUS_INTERVAL_S = 15.0
OBSERVE_INTERVAL_S = 1.0
RETRY_BASE_S = 5.0
RETRY_MAX_S = 300.0
UNLOAD_DEADLINE_S = 30.0
PEERING_LIFETIME_S = 30.0
METRICS_PORT = 9090


def parse_seconds(what: str, raw: str) -> float:
    """A positive number of seconds; ValueError naming `what` otherwise."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{what}={raw!r} is not a number of seconds, e.g. 30") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{what}={raw!r} must be a positive number of seconds, e.g. 30")
    return value
