"""Shared test helpers: tiny model builders, real Triton and kube-apiserver fixtures."""
