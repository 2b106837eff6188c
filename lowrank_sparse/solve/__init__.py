"""Per-layer solvers for W ~ L + S.

* :mod:`.torch_backend` -- the ADMM in pure torch (CPU/CUDA), the reference;
* :mod:`.native` -- the same iterations in the C++ core (lowrank_sparse._core);
* :mod:`.activations` -- activations and the elementwise Z-step;
* :mod:`.baselines` -- rank_only (activation-aware truncated SVD) and sparse_only
  (activation-aware magnitude pruning with least-squares refit);
* :mod:`.result` -- Decomposition / SolveInfo.

The user-facing entry point is :func:`lowrank_sparse.decompose`.
"""

from __future__ import annotations

from .baselines import rank_only, refit_support, sparse_only
from .result import Decomposition, SolveInfo

__all__ = ["Decomposition", "SolveInfo", "rank_only", "refit_support", "sparse_only"]
