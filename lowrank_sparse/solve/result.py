"""The result of a per-layer decomposition W ~ L + S, L = U @ V."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch

from ..structure import Structure

Array = Union[torch.Tensor, np.ndarray]


@dataclass
class SolveInfo:
    """What the solver did.

    Attributes:
        iterations: ADMM iterations run.
        converged: True if the residual-based stopping rule fired before ``max_iter``.
        seconds: wall time of the solve (s).
        primal_residuals: per-iteration primal residual, relative to ||W||_F.
        dual_residuals: per-iteration dual residual, relative to ||W||_F.
        objective: per-iteration objective value (reconstruction error, relative).
        backend: "native" or "torch".
        extra: anything solver-specific (penalty history, subsample size, ...).
        path: the algorithm that produced the result: "admm" (decompose's ADMM, every
            mode), "refine" (the activation-aware refinement of a nonlinear
            activation; ``iterations`` / ``converged`` are then its L-BFGS ones), a
            peer's name ("oats", "wanda", "whitened_svd"), or "" when not recorded
            (the baselines' closed forms, results written before this field existed).
    """

    iterations: int = 0
    converged: bool = False
    seconds: float = 0.0
    primal_residuals: list[float] = field(default_factory=list)
    dual_residuals: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    path: str = ""


@dataclass
class Decomposition:
    """W ~ U @ V + S.

    Attributes:
        U: (m, r) left factor.
        V: (r, n) right factor; the low-rank part is L = U @ V.  With ``slices = g > 1``
            (ALDS channel slicing) U is (m, g*j) and V (g*j, n) is block-diagonal: slice i
            uses rows [i*j, (i+1)*j) of V and only columns [i*n/g, (i+1)*n/g).
        S: (m, n) sparse part, dense storage with exact zeros off its support.
        structure: the sparsity structure S obeys.
        info: solver record.
        slices: number of input-column slices of L (1: plain low rank).
    The arrays are torch tensors when the input weight was a tensor (same device and
    dtype) and numpy arrays when it was a numpy array.
    """

    U: Array
    V: Array
    S: Array
    structure: Structure
    info: SolveInfo
    slices: int = 1

    @property
    def rank(self) -> int:
        """Rank of L per input-channel slice (the rank of L when ``slices == 1``)."""
        return int(self.U.shape[1]) // self.slices

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.U.shape[0]), int(self.V.shape[1]))

    @property
    def L(self) -> Array:
        """(m, n) low-rank part U @ V."""
        return self.U @ self.V

    def dense(self) -> Array:
        """(m, n) the approximation L + S."""
        return self.U @ self.V + self.S

    @property
    def nnz(self) -> int:
        """Nonzero entries of S."""
        if isinstance(self.S, torch.Tensor):
            return int(torch.count_nonzero(self.S))
        return int(np.count_nonzero(self.S))

    @property
    def params(self) -> int:
        """Stored values: U, the nonzero blocks of V, and nnz(S) (index storage not counted).

        For slices=1 this is r*(m+n) + nnz(S)."""
        m, n = self.shape
        rt = int(self.U.shape[1])
        return rt * m + rt * (n // self.slices) + self.nnz
