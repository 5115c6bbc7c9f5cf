"""The router's settings: ports, limits, hold bounds. One frozen dataclass; `shoal router run`
fills it from flags (shoal.router.cli), tests construct it directly."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024

# HTTP header a client may send to bound how long the router holds and retries its request, in
# seconds (gRPC clients use their call deadline). Triton's own `timeout` request parameter is
# passed through untouched: it is Triton's queue timeout, not the router's.
TIMEOUT_HEADER = "X-Shoal-Timeout"


@dataclass(frozen=True)
class RouterSettings:
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int | None = 8001  # None: no gRPC front door
    metrics_port: int | None = 8002  # None: no metrics endpoint; with workers: port + worker index
    max_body_bytes: int = 512 * MIB  # HTTP request bodies (Triton's own default has no 4 MiB cap)
    max_grpc_message_bytes: int = 512 * MIB
    max_held_per_model: int = 1024  # requests held for one model while it is not ready
    max_retries: int = 2  # more tries on another replica after a connection failure
    upstream_timeout_s: float = 300.0  # one upstream call, when the client sends no timeout
    retry_after_s: int = 5  # the Retry-After a 503 carries
    # Triton's restricted-API header (`--http-restricted-api=model-repository,<name>=<key>`): a
    # client's copy is dropped, so the key that guards Triton's repository API never passes through.
    restricted_api_header: str = "shoal-admin-key"
    count_tokens: bool = True  # OpenAI `usage`: ask the entry's tokenize step for token counts

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_grpc_message_bytes", "max_held_per_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.upstream_timeout_s <= 0:
            raise ValueError(f"upstream_timeout_s must be positive, got {self.upstream_timeout_s}")
