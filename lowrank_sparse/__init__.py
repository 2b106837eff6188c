"""lowrank_sparse: compress trained PyTorch networks as low-rank + structured-sparse layers."""

from __future__ import annotations

__version__ = "0.1.0"
