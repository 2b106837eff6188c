"""SVD-LLM: truncation-aware data whitening, then truncated SVD.

Wang, Zheng, Zhang & Wang, "SVD-LLM: Truncation-aware Singular Value Decomposition
for Large Language Model Compression" (2024).  With the Cholesky factor C of the
input Gram matrix, X X^T = C C^T (C lower triangular), the output error of a
low-rank L is ||(W - L) X||_F^2 = ||(W - L) C||_F^2, so the best rank-r L is the
truncation of W C mapped back: L = [W C]_r C^{-1}.  Its error is exactly the tail
of the singular values of W C: sum_{i > r} sigma_i(W C)^2.

X X^T is regularised as X X^T + eps * mean(diag) * I (eps = 1e-6, raised tenfold
until the factorisation succeeds), so rank-deficient data still factor.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..solve.result import Array, Decomposition
from ._common import as_float, calibration, result, unstructured

__all__ = ["whitened_svd", "regularised_cholesky"]


def regularised_cholesky(G: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of G + lam I and the lam used (lam = eps * mean(diag G),
    multiplied by 10 until the factorisation succeeds)."""
    n = G.shape[0]
    scale = max(float(torch.diagonal(G).mean()), 1e-30)
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    for _ in range(12):
        lam = eps * scale
        C, info = torch.linalg.cholesky_ex(G + lam * eye)
        if int(info) == 0:
            return C, lam
        eps *= 10.0
    raise ValueError("the input Gram matrix could not be factored (non-finite inputs?)")


def whitened_svd(W: Array, rank: int, X: Optional[Array] = None, *, gram: Optional[Array] = None,
                 eps: float = 1e-6) -> Decomposition:
    """Rank-``rank`` SVD-LLM factorisation of W (m, n) with calibration inputs X (n, N),
    or their Gram matrix gram (n, n) = X X^T (C its Cholesky factor); exactly one of the two.

    Returns:
        Decomposition with U (m, r) = U_r sqrt(s), V (r, n) = sqrt(s) Vt_r C^{-1},
        S = 0; info.extra["ridge"] the regularisation added to X X^T.
    """
    t0 = time.perf_counter()
    W0 = as_float(W, "W")
    m, n = W0.shape
    Xt, G = calibration(X, gram, n, W0)
    C, lam = regularised_cholesky(Xt @ Xt.mT if Xt is not None else G, eps)
    Uf, s, Vt = torch.linalg.svd(W0 @ C, full_matrices=False)
    sq = torch.sqrt(s[:rank])
    U = Uf[:, :rank] * sq
    # V = sqrt(s) Vt C^{-1}: solve V C = B, i.e. C^T V^T = B^T (C^T upper triangular)
    B = sq.reshape(-1, 1) * Vt[:rank]
    V = torch.linalg.solve_triangular(C.mT, B.mT, upper=True).mT
    return result(W, U, V, torch.zeros_like(W0), unstructured(), "whitened_svd", t0, ridge=lam)
