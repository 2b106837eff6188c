"""Shared plumbing of the peer methods: array conversion, input norms, results."""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from ..solve.result import Array, Decomposition, SolveInfo
from ..structure import Structure, parse_structure


def as_float(a: Array, name: str, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """numpy / torch -> torch tensor in the compute dtype (float64 stays, else float32)."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor) or not a.is_floating_point() or a.dim() != 2:
        raise TypeError(f"{name} must be a 2-D float numpy array or torch tensor")
    dt = torch.float64 if a.dtype == torch.float64 else torch.float32
    if like is not None:
        dt = like.dtype
    return a.detach().to(dt)


def input_norms(X: torch.Tensor) -> torch.Tensor:
    """(n,) ||x_j|| over the samples (rows of X (n, N)), floored at 1e-6 of the largest
    so that dead inputs do not divide by zero."""
    d = torch.linalg.vector_norm(X, dim=1)
    top = float(d.max()) if d.numel() else 0.0
    return torch.clamp(d, min=max(top * 1e-6, 1e-30))


def result(W: Array, U: torch.Tensor, V: torch.Tensor, S: torch.Tensor, structure: Structure,
           method: str, t0: float, iterations: int = 0, objective: Optional[list[float]] = None,
           **extra: Any) -> Decomposition:
    """Package factors as a Decomposition in W's type and dtype."""
    def out(t: torch.Tensor) -> Array:
        if isinstance(W, np.ndarray):
            return t.detach().cpu().numpy().astype(W.dtype, copy=False)
        return t.to(dtype=W.dtype, device=W.device)

    info = SolveInfo(iterations=iterations, converged=True, seconds=time.perf_counter() - t0,
                     objective=list(objective or []), backend="torch",
                     extra={"method": method, **extra}, path=method)
    return Decomposition(U=out(U), V=out(V), S=out(S), structure=structure, info=info)


def unstructured() -> Structure:
    return parse_structure("unstructured")
