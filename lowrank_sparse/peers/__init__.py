"""Published per-layer compression methods, written from their papers, for comparison.

Each takes a weight W (m, n) (conv: (out, in*kh*kw)) and calibration inputs X (n, N)
(samples as columns; conv: unfolded patches) and returns the library's
:class:`~lowrank_sparse.solve.result.Decomposition`, with the same parameter
accounting as :func:`lowrank_sparse.decompose`: rank r costs r*(m+n), S its nonzeros.

* :func:`.oats.oats` -- OATS (Zhang & Papyan 2024): alternating truncated SVD and
  hard thresholding of the input-norm-scaled weight W diag(||x_j||);
* :func:`.wanda.wanda` -- Wanda (Sun et al. 2023): per-output-row pruning by
  |W_ij| ||x_j||, no update of the kept weights;
* :func:`.whitened_svd.whitened_svd` -- SVD-LLM (Wang et al. 2024): truncation of
  W C, C the Cholesky factor of X X^T, mapped back by C^{-1}.
"""

from __future__ import annotations

from .oats import oats
from .wanda import wanda
from .whitened_svd import whitened_svd

__all__ = ["oats", "wanda", "whitened_svd"]
