"""Refits of S's values on a fixed support, and the relative error they are judged by.

* :func:`refit_support`: least squares on a fixed support in the metric of G (ridge
  toward R), the exact minimiser of the Gram-mode objective for fixed L and support;
* :func:`refit_weight_`: the weight-space case (S_J = (W0 - U V)_J), in place over
  row blocks, no (m, n) temporary;
* :func:`relative_error`: ||W0 - M|| / ||W0||, in the G metric when given.

Used by :func:`lowrank_sparse.decompose` after the ADMM and by the sparse-only baseline.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["REFIT_RIDGE", "refit_support", "refit_weight_", "relative_error"]


def relative_error(W0: torch.Tensor, M: torch.Tensor, G: Optional[torch.Tensor]) -> float:
    """Relative error ||W0 - M|| (in the G metric when given)."""
    E = W0 - M
    if G is None:
        return float(torch.linalg.vector_norm(E)) / max(float(torch.linalg.vector_norm(W0)), 1e-300)
    num = float(((E @ G) * E).sum())
    den = float(((W0 @ G) * W0).sum())
    return math.sqrt(max(num, 0.0)) / math.sqrt(den) if den > 0 else math.sqrt(max(num, 0.0))


def refit_weight_(
    W0: torch.Tensor, U: torch.Tensor, V: torch.Tensor, S: torch.Tensor
) -> tuple[float, float]:
    """Weight-space refit of S on its support, in place: S_J = (W0 - U V)_J.

    The exact minimiser of ||W0 - U V - S|| over S with S's support fixed (the values
    on the support are free, the rest stays 0), so the error cannot increase.  Runs
    over blocks of rows (about 2^18 entries each) so that no (m, n) temporary is
    created: the only (m, n) array is S itself.

    Args:
        W0: (m, n) weight; U: (m, q); V: (q, n); S: (m, n), overwritten.

    Returns:
        (relative error before, relative error after), ||W0 - U V - S|| / ||W0||,
        accumulated in float64.
    """
    m, n = W0.shape
    nt = torch.get_num_threads()
    if nt != 1 and W0.device.type == "cpu":
        # One thread: the blocks are small; on a loaded machine torch's pool wake-ups
        # cost up to 0.8 s per call at 512x4608 (0.013 s on one thread).
        torch.set_num_threads(1)
        try:
            return refit_weight_(W0, U, V, S)
        finally:
            torch.set_num_threads(nt)
    rows = max(1, min(m, (1 << 18) // max(n, 1)))
    before = after = nw = 0.0
    zero = torch.zeros((), dtype=S.dtype, device=S.device)
    for a in range(0, m, rows):
        b = min(m, a + rows)
        W0b, Sb = W0[a:b], S[a:b]
        E = torch.addmm(W0b, U[a:b], V, alpha=-1) if U.shape[1] > 0 else W0b.clone()  # (rows, n)
        before += float(torch.linalg.vector_norm(E - Sb, dtype=torch.float64)) ** 2
        Sb.copy_(torch.where(Sb != 0, E, zero))
        after += float(torch.linalg.vector_norm(E - Sb, dtype=torch.float64)) ** 2
        nw += float(torch.linalg.vector_norm(W0b, dtype=torch.float64)) ** 2
    den = math.sqrt(nw) if nw > 0 else 1.0
    return math.sqrt(before) / den, math.sqrt(after) / den


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

    Cost: one (m, n) x (n, n) product for every row's right-hand side
    (G_{J,J^c} R_{J^c} = [G (R_i masked to J^c)]_J), then per row a gather of the
    (k, k) block and its Cholesky factorisation, k^3 / 3 flops for k kept entries
    (rows with the same support share one factorisation; rows with the same count k
    are factorised as a batch).

    Args:
        R: (m, n) target (W0 minus the low-rank part).
        mask: (m, n) bool support.
        G: (n, n) symmetric PSD, or None for the Euclidean metric.
    """
    zero = torch.zeros((), dtype=R.dtype, device=R.device)
    if G is None:
        return torch.where(mask, R, zero)
    m, n = R.shape
    lam = (REFIT_RIDGE if ridge is None else float(ridge)) * float(torch.diagonal(G).mean().clamp(min=1e-30))
    T = torch.where(mask, zero, R) @ G  # (m, n): row i is G R_{i, J^c} (G symmetric)
    S = torch.zeros_like(R)
    if bool((mask == mask[0:1]).all()):
        J = mask[0].nonzero().squeeze(1)
        if J.numel() == n:
            return R.clone()
        if J.numel():
            L = _cholesky(G[J.unsqueeze(1), J], lam)  # (k, k)
            S[:, J] = R[:, J] + torch.cholesky_solve(T[:, J].mT, L).mT
        return S
    counts = mask.sum(1)
    for k in counts.unique().tolist():
        if k == 0:
            continue
        rows = (counts == k).nonzero().squeeze(1)
        for chunk in rows.split(max(1, (1 << 23) // (k * k))):  # at most 64 MiB of float64 blocks
            idx = mask[chunk].nonzero()[:, 1].view(-1, k)  # (b, k) kept columns per row
            L = _cholesky(G[idx.unsqueeze(2), idx.unsqueeze(1)], lam)  # (b, k, k)
            rhs = T[chunk.unsqueeze(1), idx].unsqueeze(2)  # (b, k, 1)
            vals = R[chunk.unsqueeze(1), idx] + torch.cholesky_solve(rhs, L).squeeze(2)
            S[chunk.unsqueeze(1), idx] = vals
    return S


def _cholesky(A: torch.Tensor, lam: float) -> torch.Tensor:
    """Lower Cholesky factor of A + lam I (A: (..., k, k) symmetric PSD), in place on
    A's diagonal; a larger ridge where rounding leaves a block not positive definite."""
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    diag += lam
    L, info = torch.linalg.cholesky_ex(A)
    bump = max(lam, 1e-30)
    for _ in range(12):
        if not bool((info > 0).any()):
            return L
        bump *= 10.0
        diag += bump
        L, info = torch.linalg.cholesky_ex(A)
    raise ValueError("refit: a block of the Gram matrix is not positive definite even with a ridge "
                     f"of {bump:.3g} (non-finite calibration statistics?)")
