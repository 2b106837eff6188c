"""Structured-sparsity operators: numpy arrays and CPU tensors run in the C++ core,
CUDA tensors the pure-torch twins of :mod:`.torch_ops` (same semantics).  Inputs are
never modified; the result has the input's kind, dtype and device."""

from __future__ import annotations

import numpy as np

from ..structure import Structure
from . import torch_ops
from ._boundary import Array, back, core, core_structure, to_np
from ._checks import check_finite, check_int, check_k, check_tau, check_type, structure_for, use_torch

__all__ = ["soft_threshold", "topk_project", "group_soft_threshold", "group_topk_project",
           "nm_project", "project"]


def soft_threshold(x: Array, tau: float) -> Array:
    """sign(x) * max(|x| - tau, 0) elementwise.  x: any shape; tau >= 0."""
    check_type(x, "x")
    tau = check_tau(tau)
    check_finite(x, "x")
    if use_torch(x):
        return torch_ops.soft_threshold(x, tau)  # type: ignore[arg-type]
    return back(core().soft_threshold(to_np(x), tau), x)


def topk_project(x: Array, k: int) -> Array:
    """Keep the k entries of largest |x| (any shape, flat order; ties: lower index)."""
    check_type(x, "x")
    k = check_k(k, int(np.prod(x.shape)), "number of entries")
    check_finite(x, "x")
    if use_torch(x):
        return torch_ops.topk_project(x, k)  # type: ignore[arg-type]
    return back(core().topk_project(to_np(x), k), x)


def group_soft_threshold(x: Array, tau: float, structure: str | Structure, block: int = 1) -> Array:
    """Prox of tau * sum_g ||x_g||_2 on x (m, n): group g scaled by max(0, 1 - tau/||x_g||).

    structure: "unstructured" (plain soft-threshold), "row", "column", "channel"
    (column blocks of ``block`` = kh*kw) or a Structure.
    """
    check_type(x, "x")
    tau = check_tau(tau)
    s = structure_for(structure, block, x)
    if s.kind == "nm":
        raise ValueError("group_soft_threshold: N:M is a pattern, not a group structure")
    check_finite(x, "x")
    if use_torch(x):
        return torch_ops.group_soft_threshold(x, tau, s)  # type: ignore[arg-type]
    return back(core().group_soft_threshold(to_np(x), tau, core_structure(s)), x)


def group_topk_project(x: Array, k: int, structure: str | Structure, block: int = 1) -> Array:
    """Keep the k groups of largest L2 norm of x (m, n) (ties: lower group index).

    For "unstructured" k counts entries.
    """
    check_type(x, "x")
    s = structure_for(structure, block, x)
    if s.kind == "nm":
        raise ValueError("group_topk_project: N:M is a pattern, not a group structure; use nm_project")
    k = check_k(k, s.num_groups(int(x.shape[0]), int(x.shape[1])), f"groups of {s.name!r}")
    check_finite(x, "x")
    if use_torch(x):
        return torch_ops.group_topk_project(x, k, s)  # type: ignore[arg-type]
    return back(core().group_topk_project(to_np(x), k, core_structure(s)), x)


def nm_project(x: Array, n: int, m: int) -> Array:
    """N:M projection of x (rows, cols): in each row keep ``n`` of every ``m`` consecutive
    entries, those of largest |x| (ties: lower column).  Needs 1 <= n < m, cols % m == 0."""
    check_type(x, "x")
    n, m = check_int(n, "n"), check_int(m, "m")
    s = structure_for(f"{n}:{m}", 1, x)
    check_finite(x, "x")
    if use_torch(x):
        return torch_ops.nm_project(x, s.n, s.m)  # type: ignore[arg-type]
    return back(core().nm_project(to_np(x), s.n, s.m), x)


def project(x: Array, k: int, structure: str | Structure, block: int = 1) -> Array:
    """Hard projection of x (m, n) onto the structure: k groups (entries for
    "unstructured"); for "N:M" k is ignored (the pattern fixes the count)."""
    check_type(x, "x")
    s = structure_for(structure, block, x)
    if s.kind == "nm":
        return nm_project(x, s.n, s.m)
    return group_topk_project(x, k, s)


