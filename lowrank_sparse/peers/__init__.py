"""Published per-layer compression methods, written from their papers, for comparison.

Each takes a weight W (m, n) (conv: (out, in*kh*kw)) and calibration inputs X (n, N)
(samples as columns; conv: unfolded patches) or, as ``gram=``, their Gram matrix
X X^T (n, n) (any positive scale), and returns the library's
:class:`~lowrank_sparse.solve.result.Decomposition`, with the same parameter
accounting as :func:`lowrank_sparse.decompose`: rank r costs r*(m+n), S its nonzeros.

* :func:`.oats.oats` -- OATS (Zhang & Papyan 2024): alternating truncated SVD and
  hard thresholding of the input-norm-scaled weight W diag(||x_j||);
* :func:`.sparsegpt.sparsegpt` -- SparseGPT (Frantar & Alistarh 2023): block-wise
  adaptive mask by the OBS saliency w^2 / [H^{-1}]_jj^2, the pruned weights' errors
  propagated to the later columns through the Cholesky factor of H^{-1} (H = X X^T);
* :func:`.wanda.wanda` -- Wanda (Sun et al. 2023): per-output-row pruning by
  |W_ij| ||x_j||, no update of the kept weights;
* :func:`.whitened_svd.whitened_svd` -- SVD-LLM (Wang et al. 2024): truncation of
  W C, C the Cholesky factor of X X^T, mapped back by C^{-1}.
"""

from __future__ import annotations

from .oats import oats
from .sparsegpt import sparsegpt
from .wanda import wanda
from .whitened_svd import whitened_svd

__all__ = ["oats", "sparsegpt", "wanda", "whitened_svd"]
