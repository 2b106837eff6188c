"""Exceptions and warnings of lowrank_sparse.

The C++ core's failures arrive as these (csrc/bindings/errors.cpp registers the
translation): argument mistakes stay ValueError / TypeError naming the argument.
"""

from __future__ import annotations

__all__ = ["LapackError", "LayoutError", "ConvergenceWarning"]


class LapackError(RuntimeError):
    """A LAPACK routine inside the core returned info != 0, e.g. a NaN reached the SVD
    (inputs so large that the iterations overflow) or a matrix that must be positive
    definite is not.  The message names the routine and its info code."""


class LayoutError(TypeError, ValueError):
    """An array argument of the core is not C-contiguous.  The core reads the caller's
    memory without copying, so it needs row-major contiguous data
    (``numpy.ascontiguousarray`` / ``tensor.contiguous()``).  Both a TypeError (wrong
    kind of array) and a ValueError, so either ``except`` clause catches it."""


class ConvergenceWarning(UserWarning):
    """A solver stopped at its iteration cap before its stopping rule was met."""
