"""SparseGPT: one-shot pruning with column-wise OBS updates of the kept weights.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot" (2023).  With the Hessian of the layer-wise squared error H = X X^T,
dampened to H + damp * mean(diag H) I, and U the upper Cholesky factor of its inverse
(H^{-1} = U^T U), the columns j = 0 .. n-1 are visited in order.  Pruning w = W[:, j]
where the mask drops it and compensating on the columns not yet visited is the OBS
update in its Cholesky form::

    err = (w - mask * w) / U_jj
    W[:, j+1:] -= err U[j, j+1:]

Columns are processed in blocks of ``block_size``: the updates inside a block are
applied column by column, those to later blocks at once at the end of the block
(lazy batch updates, E U[block, later]).  The mask is chosen adaptively from the
weights as updated so far, by the OBS saliency w_ij^2 / U_jj^2: per output row at
the start of every block (``pattern="per_row"``: each row keeps
floor(density * block_cols + 0.5) of the block's columns), or at the start of every
group of M columns (``pattern="N:M"``: N of each M kept).
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from ..solve.result import Array, Decomposition
from ..structure import Structure, parse_structure
from ._common import as_float, calibration, result

__all__ = ["hessian_inverse_cholesky", "sparsegpt"]


def hessian_inverse_cholesky(G: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper triangular U (n, n) with U^T U = (G + damp * mean(diag G) I)^{-1},
    factored in float64, returned in G's dtype (an all-zero G is dampened by damp)."""
    H = G.to(torch.float64)
    scale = float(torch.diagonal(H).mean()) if H.numel() else 1.0
    lam = damp * (scale if scale > 0 else 1.0)
    H = H + lam * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError(f"the dampened Hessian is not positive definite (damp={damp}); raise damp")
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    return U.to(G.dtype)


def _pattern(pattern: str, density: float, n: int, block_size: int) -> tuple[Structure, Optional[tuple[int, int]]]:
    """(structure of S, (N, M) or None for per-row) of ``pattern``, checked."""
    if not isinstance(density, (int, float)) or isinstance(density, bool) or math.isnan(density) \
            or not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if pattern == "per_row":
        return parse_structure("unstructured"), None
    try:
        st = parse_structure(pattern)
    except (ValueError, TypeError) as e:
        raise ValueError(f"pattern must be 'per_row' or 'N:M' with 1 <= N < M, got {pattern!r} ({e})") from None
    if st.kind != "nm":
        raise ValueError(f"sparsegpt prunes per row or by N:M, got pattern {pattern!r}")
    if n % st.m or block_size % st.m:
        raise ValueError(f"pattern {pattern!r}: the weight's columns ({n}) and block_size ({block_size}) "
                         f"must be multiples of M={st.m}")
    return st, (st.n, st.m)


def _row_keep(W1: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:
    """(m, b) bool: the k entries of largest saliency W1^2 / d^2 in every row."""
    keep = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
    if k > 0:
        keep.scatter_(1, torch.topk(W1.square() / d.square(), k, dim=1).indices, True)
    return keep


def _prune_block(W1: torch.Tensor, U1: torch.Tensor, keep: torch.Tensor,
                 nm: Optional[tuple[int, int]]) -> torch.Tensor:
    """Prune the block W1 (m, b) in place column by column (U1 = U[block, block]);
    returns E (m, b), the scaled errors err of its columns."""
    m, b = W1.shape
    d = torch.diagonal(U1)
    E = torch.zeros_like(W1)
    for c in range(b):
        if nm is not None and c % nm[1] == 0:
            keep[:, c:c + nm[1]] = _row_keep(W1[:, c:c + nm[1]], d[c:c + nm[1]], nm[0])
        w = W1[:, c]
        q = torch.where(keep[:, c], w, torch.zeros((), dtype=w.dtype, device=w.device))
        err = (w - q) / d[c]
        W1[:, c + 1:] -= err.unsqueeze(1) * U1[c, c + 1:].unsqueeze(0)
        W1[:, c] = q
        E[:, c] = err
    return E


def sparsegpt(W: Array, density: float, X: Optional[Array] = None, *, gram: Optional[Array] = None,
              pattern: str = "per_row", block_size: int = 128, damp: float = 0.01) -> Decomposition:
    """SparseGPT pruning of W (m, n) with calibration inputs X (n, N), or their Gram
    matrix gram (n, n) = X X^T (any positive scale); exactly one of the two.

    Args:
        density: fraction of every row kept (per block, see the module doc);
            ignored by an N:M ``pattern``.
        pattern: "per_row" or "N:M" (e.g. "2:4").
        block_size: columns per block (mask selection and lazy batch updates).
        damp: dampening of H, as a fraction of mean(diag H).

    Returns:
        Decomposition with U (m, 0), V (0, n), S = the pruned, OBS-updated weight.

    Raises:
        ValueError: density outside [0, 1], a bad pattern / block_size / damp, X or
            gram of the wrong shape or with NaN / Inf, neither or both given.
    """
    t0 = time.perf_counter()
    W0 = as_float(W, "W")
    if not bool(torch.isfinite(W0).all()):
        raise ValueError("W contains NaN or Inf entries")
    if not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
    m, n = W0.shape
    st, nm = _pattern(pattern, density, n, block_size)
    Xt, G = calibration(X, gram, n, W0)
    U = hessian_inverse_cholesky(Xt @ Xt.mT if Xt is not None else G, float(damp))
    S = W0.clone()
    for i in range(0, n, block_size):
        j = min(i + block_size, n)
        W1, U1 = S[:, i:j].clone(), U[i:j, i:j]
        keep = _row_keep(W1, torch.diagonal(U1), int(density * (j - i) + 0.5)) if nm is None \
            else torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
        E = _prune_block(W1, U1, keep, nm)
        S[:, i:j] = W1
        S[:, j:] -= E @ U[i:j, j:]
    U0 = torch.zeros(m, 0, dtype=W0.dtype, device=W0.device)
    V0 = torch.zeros(0, n, dtype=W0.dtype, device=W0.device)
    return result(W, U0, V0, S, st, "sparsegpt", t0, pattern=pattern, block_size=block_size,
                  damp=float(damp))
