"""Single-component baselines with the same parameter accounting as L + S.

* :func:`rank_only`: activation-aware truncated SVD.  Weight space: the Eckart-Young
  truncation of W.  Identity activation with data (X or gram G): the closed form
  min_{rank L <= r} tr((W - L) G (W - L)^T) = [W G^{1/2}]_r (G^{1/2})^+ (SVD in the
  whitened space, mapped back).  Nonlinear activations or slices > 1 with data: the
  ADMM of :func:`lowrank_sparse.decompose` with density 0.
* :func:`sparse_only`: activation-aware magnitude pruning.  Score |W_ij| sqrt(G_jj)
  (the group L2 norm of those for group structures; G = I without data), keep the
  top-k groups, then, with data, refit the kept entries of every row by least squares
  (:func:`refit_support`).

Both return a :class:`~lowrank_sparse.solve.result.Decomposition` (U, V of width 0 for
sparse_only; S = 0 for rank_only).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from .._validate import Array, compute_dtype, prepare
from ..ops import torch_ops
from .result import Decomposition, SolveInfo


#: Ridge of the least-squares refit, relative to the mean diagonal of G (see refit_support).
REFIT_RIDGE = 1e-4


def refit_support(R: torch.Tensor, mask: torch.Tensor, G: Optional[torch.Tensor] = None,
                  ridge: Optional[float] = None) -> torch.Tensor:
    """Least-squares values on a fixed support, with a small ridge toward R.

    Returns S (m, n), zero off ``mask``, minimising, row by row,
    (R_i - S_i) G (R_i - S_i)^T + lam ||S_iJ - R_iJ||^2 (||R_i - S_i||^2 when G is
    None).  With J the kept columns of a row: S_J = R_J + (G_JJ + lam I)^{-1} G_{J,J^c}
    R_{J^c}, lam = ``ridge`` (default :data:`REFIT_RIDGE` = 1e-4) times the mean diagonal
    of G.  The ridge shrinks toward plain masking (S_J = R_J); it matters when the
    calibration data has fewer samples than a row keeps entries (G_JJ singular), where
    an unregularised refit fits rounding noise and returned values 20x the weights.

    Args:
        R: (m, n) target (W0 minus the low-rank part).
        mask: (m, n) bool support.
        G: (n, n) symmetric PSD, or None for the Euclidean metric.
    """
    zero = torch.zeros((), dtype=R.dtype, device=R.device)
    if G is None:
        return torch.where(mask, R, zero)
    m, n = R.shape
    ridge = (REFIT_RIDGE if ridge is None else float(ridge)) * float(torch.diagonal(G).mean().clamp(min=1e-30))
    S = torch.zeros_like(R)

    def solve_rows(rows: torch.Tensor, J: torch.Tensor) -> None:
        Jc = ~J
        nj = int(J.sum())
        if nj == 0:
            return
        if nj == n:
            S[rows] = R[rows]
            return
        GJJ = G[J][:, J] + ridge * torch.eye(nj, dtype=R.dtype, device=R.device)
        rhs = G[J][:, Jc] @ R[rows][:, Jc].mT  # (nj, rows)
        sol = torch.linalg.solve(GJJ, rhs).mT  # (rows, nj)
        block = R[rows][:, J] + sol
        tmp = torch.zeros(rows.numel(), n, dtype=R.dtype, device=R.device)
        tmp[:, J] = block
        S[rows] = tmp

    if bool((mask == mask[0:1]).all()):
        solve_rows(torch.arange(m, device=R.device), mask[0])
    else:
        for i in range(m):
            solve_rows(torch.tensor([i], device=R.device), mask[i])
    return S


def _to_out(t: torch.Tensor, like: Array, dtype: Any) -> Array:
    if isinstance(like, np.ndarray):
        return t.detach().cpu().numpy().astype(like.dtype, copy=False)
    return t.to(dtype=like.dtype)


def rank_only(
    W: Array,
    rank: int,
    *,
    X: Optional[Array] = None,
    gram: Optional[Array] = None,
    bias: Optional[Array] = None,
    activation: Optional[str] = None,
    negative_slope: float = 0.01,
    slices: int = 1,
    backend: str = "auto",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    subsample: int = 8192,
) -> Decomposition:
    """Activation-aware truncated SVD of W (m, n) at ``rank`` (per slice); see module doc.

    Returns a Decomposition with U (m, slices*rank), V (slices*rank, n), S = 0.
    """
    if isinstance(rank, int) and not isinstance(rank, bool) and rank == 0:
        raise ValueError("rank_only needs rank >= 1")
    pr = prepare(
        W, rank, 0.0, "unstructured", X=X, gram=gram, bias=bias, activation=activation,
        negative_slope=negative_slope, slices=slices, backend=backend, max_iter=max_iter,
        tol=tol, seed=seed, subsample=subsample,
    )
    spec = pr.spec
    if spec.mode == "nonlinear" or (spec.mode == "gram" and spec.slices > 1):
        from ..decomposition import decompose

        dec = decompose(
            W, rank, 0.0, X=X, gram=gram, bias=bias, activation=activation,
            negative_slope=negative_slope, slices=slices, backend=backend, max_iter=max_iter,
            tol=tol, seed=seed, subsample=subsample,
        )
        dec.info.extra["method"] = "rank_only (ADMM, density 0)"
        return dec
    t0 = time.perf_counter()
    W0 = pr.W.to(compute_dtype(pr.W))
    m, n = W0.shape
    r, g = spec.rank, spec.slices
    nsl = n // g
    U = torch.zeros(m, g * r, dtype=W0.dtype, device=W0.device)
    V = torch.zeros(g * r, n, dtype=W0.dtype, device=W0.device)
    if spec.mode == "weight":
        for i in range(g):
            Uf, s, Vt = torch.linalg.svd(W0[:, i * nsl : (i + 1) * nsl], full_matrices=False)
            sq = torch.sqrt(s[:r])
            U[:, i * r : (i + 1) * r] = Uf[:, :r] * sq
            V[i * r : (i + 1) * r, i * nsl : (i + 1) * nsl] = sq.reshape(-1, 1) * Vt[:r]
    else:
        G = pr.gram
        assert G is not None
        d, Q = torch.linalg.eigh(G)
        d = torch.clamp(d, min=0)
        dmax = float(d.max()) if d.numel() else 0.0
        keep = d > dmax * n * torch.finfo(d.dtype).eps
        sq_d = torch.sqrt(d)
        inv_sq = torch.where(keep, 1.0 / torch.where(keep, sq_d, torch.ones_like(sq_d)), torch.zeros_like(sq_d))
        Gh = (Q * sq_d) @ Q.mT
        Ghp = (Q * inv_sq) @ Q.mT
        Uf, s, Vt = torch.linalg.svd(W0 @ Gh, full_matrices=False)
        sq = torch.sqrt(s[:r])
        U[:, :r] = Uf[:, :r] * sq
        V[:r] = (sq.reshape(-1, 1) * Vt[:r]) @ Ghp
    S = torch.zeros_like(W0)
    info = SolveInfo(
        iterations=0, converged=True, seconds=time.perf_counter() - t0, backend="closed_form",
        extra={"method": "rank_only (truncated SVD" + (", whitened)" if spec.mode == "gram" else ")")},
    )
    return Decomposition(
        U=_to_out(U, W, None), V=_to_out(V, W, None), S=_to_out(S, W, None),
        structure=spec.structure, info=info, slices=g,
    )


def sparse_only(
    W: Array,
    density: float,
    structure: Any = "unstructured",
    *,
    X: Optional[Array] = None,
    gram: Optional[Array] = None,
    bias: Optional[Array] = None,
    activation: Optional[str] = None,
    block: int = 1,
    refit: bool = True,
    seed: int = 0,
    subsample: int = 8192,
) -> Decomposition:
    """Activation-aware magnitude pruning of W (m, n) to ``density`` (see module doc).

    With X (any activation) or gram, the kept entries are refit by least squares on
    G = X X^T / N (the linear output before the activation).  Returns a Decomposition
    with U (m, 0), V (0, n).
    """
    pr = prepare(
        W, 0, density, structure, X=X, gram=gram, bias=bias, activation=activation,
        block=block, backend="torch", seed=seed, subsample=subsample,
    )
    spec = pr.spec
    t0 = time.perf_counter()
    W0 = pr.W.to(compute_dtype(pr.W))
    G = pr.gram
    if G is None and pr.X is not None:
        G = (pr.X @ pr.X.mT) / pr.X.shape[1]
    scale = torch.sqrt(torch.clamp(torch.diagonal(G), min=0)) if G is not None else None
    scores = W0 * scale if scale is not None else W0
    kept = torch_ops.project(scores, spec.k, spec.structure)
    mask = kept != 0
    # (a subset of the kept groups: entries whose score is exactly 0 stay 0)
    S = refit_support(W0, mask, G if (refit and G is not None) else None)
    m, n = W0.shape
    info = SolveInfo(
        iterations=0, converged=True, seconds=time.perf_counter() - t0, backend="closed_form",
        extra={"method": "sparse_only (magnitude" + (", LS refit)" if G is not None and refit else ")")},
    )
    if spec.mode == "nonlinear":
        info.extra["samples"] = int(pr.X.shape[1]) if pr.X is not None else 0
    U = torch.zeros(m, 0, dtype=W0.dtype, device=W0.device)
    V = torch.zeros(0, n, dtype=W0.dtype, device=W0.device)
    return Decomposition(
        U=_to_out(U, W, None), V=_to_out(V, W, None), S=_to_out(S, W, None),
        structure=spec.structure, info=info, slices=1,
    )
