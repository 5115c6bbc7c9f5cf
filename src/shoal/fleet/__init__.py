"""The fleet: one Triton replica driver and the pure decisions it takes (placement, hot swap),
shared by `shoal serve`, the operator and the router. Nothing here imports Kubernetes or torch.

- placement.py: which models to evict so that another fits (pure).
- hot_swap.py: which Triton models an eviction unloads and a load loads (pure).
- triton_control.py: Triton's control plane over HTTP, with classified errors.
- replica.py / replica_client.py: one replica's address, and what the driver asks it.
"""
