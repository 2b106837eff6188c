"""Exceptions and warnings of lowrank_sparse.

The C++ core's failures arrive as these (csrc/bindings/errors.cpp registers the
translation): argument mistakes stay ValueError / TypeError naming the argument.
"""

from __future__ import annotations

__all__ = ["LapackError", "LayoutError", "InfeasibleBudget", "ConvergenceWarning"]

from typing import Optional


class LapackError(RuntimeError):
    """A LAPACK routine inside the core returned info != 0, e.g. a NaN reached the SVD
    (inputs so large that the iterations overflow) or a matrix that must be positive
    definite is not.  The message names the routine and its info code."""


class LayoutError(TypeError, ValueError):
    """An array argument of the core is not C-contiguous.  The core reads the caller's
    memory without copying, so it needs row-major contiguous data
    (``numpy.ascontiguousarray`` / ``tensor.contiguous()``).  Both a TypeError (wrong
    kind of array) and a ValueError, so either ``except`` clause catches it."""


class InfeasibleBudget(ValueError):
    """No configuration of the allocated layers meets a budget target.

    Attributes:
        budget: which target, ``"params"``, ``"macs"`` or ``"latency"`` (``"together"``
            when each target alone can be met but not all of them at once).
        target: the requested fraction of the whole model (of its parameters, MACs or
            predicted dense time); None for ``"together"``.
        reachable: the smallest fraction any configuration reaches (the fixed parts plus
            the smallest / fastest configuration of every allocated layer); None for
            ``"together"``.
    """

    def __init__(self, message: str, budget: str, target: Optional[float], reachable: Optional[float]) -> None:
        super().__init__(message)
        self.budget, self.target, self.reachable = budget, target, reachable


class ConvergenceWarning(UserWarning):
    """A solver stopped at its iteration cap before its stopping rule was met."""
