"""An unreachable Kubernetes API, in handlers: one line and a retry, never a traceback.

Applied (innermost, under the kopf decorators) to every handler that calls the API itself. A
control-plane restart made each timer log a traceback at each tick (1.8k lines and 50 tracebacks
for one outage); as a kopf TemporaryError it is one line per handler and retry.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from shoal.operator.kube import api_error, is_retriable
from shoal.operator.settings import retry_delay

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def tolerates_api_outage(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        stopped = kwargs.get("stopped")  # timers: set when the object or the operator goes
        try:
            return await handler(*args, **kwargs)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            message = f"Kubernetes API unreachable ({type(exc).__name__}: {exc})"
        except ApiException as exc:
            if not is_retriable(exc):
                raise
            message = f"Kubernetes API unavailable ({api_error(exc)})"
        except Exception:
            exiting = ((kwargs.get("memo") or {}).get("lifecycle") or {}).get("exiting")
            if exiting or (stopped is not None and stopped.is_set()):
                return None  # the operator is exiting: its API client closes under the timer
            raise
        raise kopf.TemporaryError(message, delay=retry_delay(kwargs.get("retry", 0)))

    return wrapper  # type: ignore[return-value]
