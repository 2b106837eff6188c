"""Wanda: pruning by weight magnitude times input norm, per output row.

Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
Models" (2023).  Score s_ij = |W_ij| ||x_j|| (x_j: the j-th input feature over the
calibration samples); in every output row keep the entries with the largest scores
(or the N:M pattern of the scores); kept weights are not updated.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..ops import torch_ops
from ..solve.result import Array, Decomposition
from ..structure import parse_structure
from ._common import as_float, calibration, norms_of, result

__all__ = ["wanda"]


def wanda(W: Array, density: float, X: Optional[Array] = None, *, gram: Optional[Array] = None,
          pattern: str = "per_row") -> Decomposition:
    """Wanda mask of W (m, n) with calibration inputs X (n, N), or their Gram matrix
    gram (n, n) = X X^T (input norms sqrt(diag(gram))); exactly one of the two.

    Args:
        density: fraction kept: floor(density * n + 0.5) entries per row
            (``pattern="per_row"``), or an N:M pattern such as "2:4" (density ignored).

    Returns:
        Decomposition with U (m, 0), V (0, n), S = W on the kept entries.
    """
    t0 = time.perf_counter()
    W0 = as_float(W, "W")
    m, n = W0.shape
    score = W0.abs() * norms_of(*calibration(X, gram, n, W0))
    if pattern == "per_row":
        k = min(n, int(density * n + 0.5))
        keep = torch.zeros(m, n, dtype=torch.bool, device=W0.device)
        if k > 0:
            keep.scatter_(1, torch.topk(score, k, dim=1).indices, True)
        st = parse_structure("unstructured")
    else:
        st = parse_structure(pattern)
        if st.kind != "nm":
            raise ValueError(f"wanda prunes per row or by N:M, got pattern {pattern!r}")
        keep = torch_ops.nm_project(score, st.n, st.m) != 0
    S = torch.where(keep, W0, torch.zeros((), dtype=W0.dtype))
    U = torch.zeros(m, 0, dtype=W0.dtype)
    V = torch.zeros(0, n, dtype=W0.dtype)
    return result(W, U, V, S, st, "wanda", t0, pattern=pattern)
