"""Fixtures for the local runtime's tests (real Triton on loopback)."""

from tests.support.triton import triton_server  # noqa: F401  (fixture)
