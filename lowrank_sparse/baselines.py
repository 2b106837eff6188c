"""Single-component baselines with the same parameter accounting as L + S.

* :func:`rank_only`: activation-aware truncated SVD.  Weight space: the Eckart-Young
  truncation of W.  Identity activation with data (X or gram G): the closed form
  min_{rank L <= r} tr((W - L) G (W - L)^T) = [W G^{1/2}]_r (G^{1/2})^+ (SVD in the
  whitened space, mapped back).  Nonlinear activations or slices > 1 with data: the
  ADMM of :func:`lowrank_sparse.decompose` with density 0.
* :func:`sparse_only`: activation-aware magnitude pruning.  Score |W_ij| sqrt(G_jj)
  (the group L2 norm of those for group structures; G = I without data), keep the
  top-k groups, then, with data, refit the kept entries of every row by least squares
  (:func:`lowrank_sparse.solve.refit.refit_support`).

Both return a :class:`~lowrank_sparse.solve.result.Decomposition` (U, V of width 0 for
sparse_only; S = 0 for rank_only).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from ._validate import Array, compute_dtype, prepare
from .decomposition import decompose
from .ops import torch_ops
from .solve.config import SolverConfig, resolve
from .solve.refit import refit_support
from .solve.result import Decomposition, SolveInfo


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
    config: Optional[SolverConfig] = None,
    backend: Optional[str] = None,
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    seed: Optional[int] = None,
    subsample: Optional[int] = None,
) -> Decomposition:
    """Activation-aware truncated SVD of W (m, n) at ``rank`` (per slice); see module doc.

    ``config`` (a :class:`~lowrank_sparse.SolverConfig`) and the keyword shortcuts are
    those of :func:`lowrank_sparse.decompose`; the closed forms use only ``seed`` and
    ``subsample`` (checks), the ADMM cases (nonlinear activation, slices with data) all
    of them but ``relaxed``, ``lam_*`` and ``progress``.

    Returns a Decomposition with U (m, slices*rank), V (slices*rank, n), S = 0.
    """
    if isinstance(rank, int) and not isinstance(rank, bool) and rank == 0:
        raise ValueError("rank_only needs rank >= 1")
    cfg = resolve(config, dict(backend=backend, max_iter=max_iter, tol=tol, seed=seed,
                               subsample=subsample))
    pr = prepare(
        W, rank, 0.0, "unstructured", X=X, gram=gram, bias=bias, activation=activation,
        negative_slope=negative_slope, slices=slices, backend=cfg.backend,
        max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, subsample=cfg.subsample,
        gram_shrinkage=cfg.gram_shrinkage,
    )
    spec = pr.spec
    if spec.mode == "nonlinear" or (spec.mode == "gram" and spec.slices > 1):
        return _rank_only_admm(W, rank, cfg, X=X, gram=gram, bias=bias, activation=activation,
                               negative_slope=negative_slope, slices=slices)
    t0 = time.perf_counter()
    W0 = pr.W.to(compute_dtype(pr.W))
    if spec.mode == "weight":
        U, V = _sliced_svd(W0, spec.rank, spec.slices)
    else:
        assert pr.gram is not None
        U, V = _whitened_svd(W0, pr.gram, spec.rank)
    S = torch.zeros_like(W0)
    info = SolveInfo(
        iterations=0, converged=True, seconds=time.perf_counter() - t0, backend="closed_form",
        extra={"method": "rank_only (truncated SVD" + (", whitened)" if spec.mode == "gram" else ")")},
    )
    return Decomposition(
        U=_to_out(U, W, None), V=_to_out(V, W, None), S=_to_out(S, W, None),
        structure=spec.structure, info=info, slices=spec.slices,
    )


def _rank_only_admm(
    W: Array, rank: int, cfg: SolverConfig, *, X: Optional[Array], gram: Optional[Array],
    bias: Optional[Array], activation: Optional[str], negative_slope: float, slices: int,
) -> Decomposition:
    """The ADMM of :func:`lowrank_sparse.decompose` at density 0 (nonlinear activation,
    or slices > 1 with data), with the solver settings of ``cfg`` that it uses."""
    admm = SolverConfig(backend=cfg.backend, max_iter=cfg.max_iter, tol=cfg.tol,
                        seed=cfg.seed, subsample=cfg.subsample, threads=cfg.threads,
                        gram_shrinkage=cfg.gram_shrinkage)
    dec = decompose(
        W, rank, 0.0, X=X, gram=gram, bias=bias, activation=activation,
        negative_slope=negative_slope, slices=slices, config=admm,
    )
    dec.info.extra["method"] = "rank_only (ADMM, density 0)"
    return dec


def _sliced_svd(W0: torch.Tensor, r: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``r`` truncated SVD of each of the ``g`` column slices of W0 (m, n).

    Returns U (m, g*r) and block-diagonal V (g*r, n), the singular values split as
    sqrt between them."""
    m, n = W0.shape
    nsl = n // g
    U = torch.zeros(m, g * r, dtype=W0.dtype, device=W0.device)
    V = torch.zeros(g * r, n, dtype=W0.dtype, device=W0.device)
    for i in range(g):
        Uf, s, Vt = torch.linalg.svd(W0[:, i * nsl : (i + 1) * nsl], full_matrices=False)
        sq = torch.sqrt(s[:r])
        U[:, i * r : (i + 1) * r] = Uf[:, :r] * sq
        V[i * r : (i + 1) * r, i * nsl : (i + 1) * nsl] = sq.reshape(-1, 1) * Vt[:r]
    return U, V


def _whitened_svd(W0: torch.Tensor, G: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimiser of tr((W0 - U V) G (W0 - U V)^T) over rank ``r``: [W0 G^{1/2}]_r (G^{1/2})^+.

    Eigenvalues of G (n, n) at or below max * n * eps are treated as 0 in the
    pseudo-inverse.  Returns U (m, r), V (r, n)."""
    m, n = W0.shape
    U = torch.zeros(m, r, dtype=W0.dtype, device=W0.device)
    V = torch.zeros(r, n, dtype=W0.dtype, device=W0.device)
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
    return U, V


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
    refit: Optional[bool] = None,
    config: Optional[SolverConfig] = None,
    seed: Optional[int] = None,
    subsample: Optional[int] = None,
) -> Decomposition:
    """Activation-aware magnitude pruning of W (m, n) to ``density`` (see module doc).

    With X (any activation) or gram, the kept entries are refit by least squares on
    G = X X^T / N (the linear output before the activation) unless ``refit`` is False.
    Of ``config`` (a :class:`~lowrank_sparse.SolverConfig`) it uses ``seed``,
    ``subsample`` and ``refit``; the keywords override them.  Returns a Decomposition
    with U (m, 0), V (0, n).
    """
    cfg = resolve(config, dict(seed=seed, subsample=subsample, refit=refit))
    refit = cfg.refit
    pr = prepare(
        W, 0, density, structure, X=X, gram=gram, bias=bias, activation=activation,
        block=block, backend="torch", seed=cfg.seed, subsample=cfg.subsample,
        gram_shrinkage=cfg.gram_shrinkage,
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
