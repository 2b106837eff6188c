"""Per-layer solvers for W ~ L + S.

* :mod:`.torch_backend` -- the ADMM in pure torch (CPU/CUDA), the reference;
* :mod:`.native` -- the same iterations in the C++ core (lowrank_sparse._core);
* :mod:`.activations` -- activations and the elementwise Z-step;
* :mod:`.refit` -- S's values refit on a fixed support, and the relative error;
* :mod:`.config` -- SolverConfig;
* :mod:`.result` -- Decomposition / SolveInfo.

The user-facing entry points are :func:`lowrank_sparse.decompose` and the baselines
of :mod:`lowrank_sparse.baselines` (rank only, sparse only), which sit above this
package and call into it.
"""

from __future__ import annotations

from .refit import refit_support
from .result import Decomposition, SolveInfo

__all__ = ["Decomposition", "SolveInfo", "refit_support"]
