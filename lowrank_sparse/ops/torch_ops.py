"""Pure-torch versions of the structured-sparsity operators and the warm-started
truncated SVD (CPU and CUDA, float32 and float64).

These have the same semantics as the C++ core (csrc/prox.hpp, csrc/svd.hpp):

* ``soft_threshold(x, tau)``: sign(x) * max(|x| - tau, 0), any shape.
* ``topk_project(x, k)``: keep the k entries of largest |x| (flat order), zero the
  rest; exactly k kept; ties broken in favour of the lower flat index.
* group operators on a (m, n) matrix with groups given by a
  :class:`~lowrank_sparse.structure.Structure`: rows, columns, or input channels
  (column blocks of ``block`` = kh*kw).  Group top-k ranks groups by their squared
  L2 norm; ties go to the lower group index.
* ``nm_project(x, n, m)``: in each row, in each window of ``m`` consecutive columns,
  keep the ``n`` entries of largest |x| (ties: lower column).
* ``truncated_svd``: randomized subspace iteration warm-started from a right
  subspace V (n, p), p = rank + oversample; each power iteration is
  Y = A V, Q = qr(Y), B = Q^T A, (Ub, s, Vb^T) = svd(B), V <- Vb.

No argument checking beyond what the computation needs: lowrank_sparse.ops
validates user input before dispatching here.  Inputs are never modified.
"""

from __future__ import annotations

import torch

from ..structure import Structure, parse_structure

__all__ = [
    "soft_threshold",
    "topk_mask",
    "topk_project",
    "group_sq_norms",
    "group_soft_threshold",
    "group_topk_project",
    "nm_project",
    "project",
    "truncated_svd",
    "svt",
]


def soft_threshold(x: torch.Tensor, tau: float) -> torch.Tensor:
    """Prox of tau*||x||_1: sign(x) * max(|x| - tau, 0).  Same shape/dtype as x."""
    return torch.sign(x) * torch.clamp(x.abs() - tau, min=0)


def topk_mask(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (same shape as ``keys``) of the k largest keys in flat order.

    Exactly ``k`` entries are True; among equal keys the lower flat index wins.
    ``keys`` must be free of NaN.
    """
    flat = keys.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(keys, dtype=torch.bool)
    # The k-th largest value (torch.topk's values are deterministic; only its
    # index order among ties is not, so it is not used for the selection).
    t = torch.topk(flat, k, largest=True, sorted=False).values.min()
    gt = flat > t
    eq = flat == t
    quota = k - int(gt.sum())
    eq_rank = torch.cumsum(eq.to(torch.int64), 0)  # 1-based rank among ties, in flat order
    mask = gt | (eq & (eq_rank <= quota))
    return mask.reshape(keys.shape)


def topk_project(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest |x| (ties: lower flat index); zero the rest."""
    mask = topk_mask(x.abs(), k)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _as_structure(structure: str | Structure, block: int = 1) -> Structure:
    return parse_structure(structure, block=block)


def group_sq_norms(x: torch.Tensor, structure: str | Structure) -> torch.Tensor:
    """Squared L2 norm of every group of the (m, n) matrix x.

    Returns (m,) for "row", (n,) for "column", (n // block,) for "channel" and
    x*x (m, n) for "unstructured".
    """
    s = _as_structure(structure)
    sq = x * x
    if s.kind == "row":
        return sq.sum(dim=1)
    if s.kind == "column":
        return sq.sum(dim=0)
    if s.kind == "channel":
        m, n = x.shape
        return sq.reshape(m, n // s.block, s.block).sum(dim=(0, 2))
    if s.kind == "unstructured":
        return sq
    raise ValueError(f"structure {s.name!r} has no groups")


def _expand_group(values: torch.Tensor, s: Structure, m: int, n: int) -> torch.Tensor:
    """Broadcast per-group values to an (m, n) tensor."""
    if s.kind == "row":
        return values.reshape(m, 1).expand(m, n)
    if s.kind == "column":
        return values.reshape(1, n).expand(m, n)
    if s.kind == "channel":
        return values.repeat_interleave(s.block).reshape(1, n).expand(m, n)
    return values


def group_soft_threshold(x: torch.Tensor, tau: float, structure: str | Structure) -> torch.Tensor:
    """Prox of tau * sum_g ||x_g||_2 on the (m, n) matrix x: each group is scaled by
    max(0, 1 - tau / ||x_g||) (zero groups stay zero).  "unstructured" is soft_threshold."""
    s = _as_structure(structure)
    if s.kind == "unstructured":
        return soft_threshold(x, tau)
    if s.kind == "nm":
        raise ValueError("group_soft_threshold: N:M is a pattern, not a group structure")
    m, n = x.shape
    norms = torch.sqrt(group_sq_norms(x, s))
    scale = torch.where(
        norms > tau, 1 - tau / torch.where(norms > 0, norms, torch.ones_like(norms)),
        torch.zeros_like(norms),
    )
    return x * _expand_group(scale, s, m, n)


def group_topk_project(x: torch.Tensor, k: int, structure: str | Structure) -> torch.Tensor:
    """Keep the k groups of largest L2 norm of the (m, n) matrix x (ties: lower group
    index); zero the rest.  For "unstructured" k counts entries (= topk_project)."""
    s = _as_structure(structure)
    if s.kind == "unstructured":
        return topk_project(x, k)
    if s.kind == "nm":
        raise ValueError("group_topk_project: N:M is a pattern, not a group structure; use nm_project")
    m, n = x.shape
    keep = topk_mask(group_sq_norms(x, s), k)
    mask = _expand_group(keep, s, m, n)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def nm_project(x: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M projection of the (rows, cols) matrix x along its columns: in every window of
    ``m`` consecutive columns of a row keep the ``n`` entries of largest |x| (ties: lower
    column).  cols % m == 0."""
    rows, cols = x.shape
    w = x.reshape(rows, cols // m, m)
    # Stable descending sort keeps equal magnitudes in column order: lower column first.
    order = torch.sort(w.abs(), dim=2, descending=True, stable=True).indices
    keep = torch.zeros_like(w, dtype=torch.bool)
    keep.scatter_(2, order[:, :, :n], True)
    out = torch.where(keep, w, torch.zeros((), dtype=x.dtype, device=x.device))
    return out.reshape(rows, cols)


def project(x: torch.Tensor, k: int, structure: str | Structure) -> torch.Tensor:
    """Hard projection onto the structure: k groups (k entries for "unstructured");
    N:M ignores k."""
    s = _as_structure(structure)
    if s.kind == "nm":
        return nm_project(x, s.n, s.m)
    return group_topk_project(x, k, s)


def _orth(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y, mode="reduced").Q


def truncated_svd(
    A: torch.Tensor,
    rank: int,
    V0: torch.Tensor | None = None,
    oversample: int = 8,
    power_iters: int = 2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` truncated SVD of A (m, n) by warm-started subspace iteration.

    Args:
        A: (m, n) matrix.
        rank: r, 1 <= r <= min(m, n).
        V0: (n, p) start for the right subspace (e.g. the V returned by the previous
            call); None -> Gaussian from ``seed``; p = min(rank + oversample, min(m, n)).
        power_iters: iterations, each costing two products with A (>= 1).

    Returns:
        U (m, r), s (r,) descending, Vt (r, n), V (n, p) orthonormal warm start.
    """
    m, n = A.shape
    if V0 is None:
        p = min(rank + oversample, m, n)
        g = torch.Generator(device=A.device).manual_seed(seed)
        V = torch.randn(n, p, generator=g, dtype=A.dtype, device=A.device)
    else:
        V = V0.to(dtype=A.dtype, device=A.device)
    U = s = Vbt = None
    for _ in range(max(1, power_iters)):
        Q = _orth(A @ V)  # (m, p)
        B = Q.mT @ A  # (p, n)
        Ub, s, Vbt = torch.linalg.svd(B, full_matrices=False)  # (p, p), (p,), (p, n)
        V = Vbt.mT
        U = Q @ Ub[:, :rank]
    assert U is not None and s is not None and Vbt is not None
    return U, s[:rank].contiguous(), Vbt[:rank].contiguous(), V.contiguous()


def svt(
    A: torch.Tensor,
    tau: float,
    rank: int,
    V0: torch.Tensor | None = None,
    oversample: int = 8,
    power_iters: int = 2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singular-value thresholding, prox of tau*||.||_* restricted to the leading
    ``rank`` singular triplets (found by :func:`truncated_svd`).

    Same semantics as the C++ core's ``lrs::svt`` (csrc/svd.hpp, ``_core.svt(...,
    rank=rank)``): only the first ``rank`` of the p subspace triplets are thresholded;
    the oversampled ones are never part of the result, whatever tau.  (The core returns
    all ``rank`` shrunk values with zeros past k; here they are cut at k.)

    Returns U (m, k), s (k,) = shrunk singular values (> 0), Vt (k, n), V (n, p) warm
    start; k <= rank is the number of singular values above tau.  The prox is U diag(s) Vt.
    """
    U, s, Vt, V = truncated_svd(A, rank, V0, oversample, power_iters, seed)
    k = int((s > tau).sum())
    return U[:, :k].contiguous(), (s[:k] - tau).contiguous(), Vt[:k].contiguous(), V
