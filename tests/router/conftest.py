"""Fixtures for the router's tests: real Triton servers (tests/support/triton.py)."""

from tests.support.triton import triton_server  # noqa: F401  (fixture)
