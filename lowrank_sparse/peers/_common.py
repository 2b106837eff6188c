"""Shared plumbing of the peer methods: array conversion, calibration inputs (X or
their Gram matrix), input norms, results."""

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


def calibration(X: Optional[Array], gram: Optional[Array], n: int,
                like: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(X, None) or (None, gram) in ``like``'s dtype: exactly one of the calibration
    inputs X (n, N) (samples as columns) or their Gram matrix gram (n, n) = X X^T
    (any positive scale, e.g. X X^T / N), checked for shape and finiteness.

    Raises:
        ValueError: neither or both given, a wrong shape, NaN / Inf entries.
    """
    if (X is None) == (gram is None):
        got = "neither" if X is None else "both"
        raise ValueError(f"give exactly one of X (n, N) calibration inputs or gram (n, n) = X X^T; got {got}")
    name, a = ("X", X) if X is not None else ("gram", gram)
    t = as_float(a, name, like=like)
    if t.shape[0] != n or (name == "gram" and t.shape[1] != n):
        want = f"({n}, N)" if name == "X" else f"({n}, {n})"
        raise ValueError(f"{name} must have shape {want} for a weight with {n} columns, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf entries")
    return (t, None) if name == "X" else (None, t)


def _floored(d: torch.Tensor) -> torch.Tensor:
    top = float(d.max()) if d.numel() else 0.0
    return torch.clamp(d, min=max(top * 1e-6, 1e-30))


def input_norms(X: torch.Tensor) -> torch.Tensor:
    """(n,) ||x_j|| over the samples (rows of X (n, N)), floored at 1e-6 of the largest
    so that dead inputs do not divide by zero."""
    return _floored(torch.linalg.vector_norm(X, dim=1))


def gram_norms(G: torch.Tensor) -> torch.Tensor:
    """(n,) sqrt(G_jj) of a Gram matrix G (n, n) = X X^T: the input norms, floored as
    in :func:`input_norms`."""
    return _floored(torch.sqrt(torch.clamp(torch.diagonal(G), min=0.0)))


def norms_of(X: Optional[torch.Tensor], G: Optional[torch.Tensor]) -> torch.Tensor:
    """Input norms from whichever of X / G :func:`calibration` returned."""
    return input_norms(X) if X is not None else gram_norms(G)


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
