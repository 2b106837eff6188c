"""OATS: outlier-aware alternating thresholding of the input-norm-scaled weight.

Zhang & Papyan, "OATS: Outlier-Aware Pruning Through Sparse and Low Rank
Decomposition" (2024).  With D = diag(||x_j||) (the input norms over the
calibration samples) and W_s = W D, alternate a fixed number of times::

    L_s = [W_s - S_s]_r          (truncated SVD to rank r)
    S_s = P_k(W_s - L_s)         (hard thresholding: top-k per output row, or the
                                  library's structures: unstructured top-k, N:M, ...)

and return L = L_s D^{-1}, S = S_s D^{-1}.  Both steps are exact minimisers of
||W_s - L_s - S_s||_F over their own block (with the exact SVD), so this scaled
objective never increases.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..ops import torch_ops
from ..solve.result import Array, Decomposition
from ..structure import parse_structure
from ._common import as_float, calibration, norms_of, result

__all__ = ["oats", "oats_scaled", "row_topk"]


def row_topk(A: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest |A_ij| in every row (ties: torch.topk's choice)."""
    if k <= 0:
        return torch.zeros_like(A)
    if k >= A.shape[1]:
        return A.clone()
    idx = torch.topk(A.abs(), k, dim=1).indices
    return torch.zeros_like(A).scatter_(1, idx, A.gather(1, idx))


def _lowrank(A: torch.Tensor, r: int, Vw: Optional[torch.Tensor], exact: bool,
             power_iters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(U sqrt(s), sqrt(s) Vt, L, warm start) of the rank-r truncation of A."""
    if exact:
        Uf, s, Vt = torch.linalg.svd(A, full_matrices=False)
        Uf, s, Vt = Uf[:, :r], s[:r], Vt[:r]
    else:
        Uf, s, Vt, Vw = torch_ops.truncated_svd(A, r, Vw, power_iters=power_iters)
    sq = torch.sqrt(s)
    U, V = Uf * sq, sq.reshape(-1, 1) * Vt
    return U, V, U @ V, Vw


def oats_scaled(A: torch.Tensor, rank: int, project, iters: int = 40, exact_svd: bool = True,
                power_iters: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """The alternation on an already scaled matrix A (m, n).

    ``project`` maps a (m, n) matrix to its sparse projection.  Returns (U, V, S,
    history of ||A - U V - S||_F / ||A||_F after each iteration)."""
    m, n = A.shape
    nA = max(float(torch.linalg.vector_norm(A)), 1e-300)
    S = torch.zeros_like(A)
    U = torch.zeros(m, rank, dtype=A.dtype, device=A.device)
    V = torch.zeros(rank, n, dtype=A.dtype, device=A.device)
    L = torch.zeros_like(A)
    Vw = None
    hist: list[float] = []
    for _ in range(iters):
        if rank > 0:
            U, V, L, Vw = _lowrank(A - S, rank, Vw, exact_svd, power_iters)
        S = project(A - L)
        hist.append(float(torch.linalg.vector_norm(A - L - S)) / nA)
        if rank == 0:
            break
    return U, V, S, hist


def oats(W: Array, rank: int, density: float, X: Optional[Array] = None, *, gram: Optional[Array] = None,
         pattern: str = "per_row", iters: int = 40, exact_svd: bool = True) -> Decomposition:
    """OATS decomposition of W (m, n) with calibration inputs X (n, N), or their Gram
    matrix gram (n, n) = X X^T (input norms sqrt(diag(gram))); exactly one of the two.

    Args:
        rank: r of L; density: fraction of W's entries S keeps: floor(density * n + 0.5)
            per row for ``pattern="per_row"``, else the library's budget of the
            structure named by ``pattern`` ("unstructured", "2:4", "row", ...).
        iters: alternations (the paper's fixed count; no stopping rule).
        exact_svd: full SVD per iteration (False: warm-started subspace iteration).

    Returns:
        Decomposition; info.objective = scaled relative residual per iteration.
    """
    t0 = time.perf_counter()
    W0 = as_float(W, "W")
    m, n = W0.shape
    d = norms_of(*calibration(X, gram, n, W0))
    if pattern == "per_row":
        k = int(density * n + 0.5)
        project, st = (lambda B: row_topk(B, k)), parse_structure("unstructured")
    else:
        st = parse_structure(pattern)
        kk = st.budget(density, m, n)
        project = (lambda B: torch_ops.project(B, kk, st)) if kk > 0 else torch.zeros_like  # noqa: E731
    U, V, S, hist = oats_scaled(W0 * d, rank, project, iters, exact_svd)
    return result(W, U, V / d, S / d, st, "oats", t0, iterations=len(hist), objective=hist,
                  pattern=pattern)
