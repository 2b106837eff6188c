"""Thread count of the C++ core's parallel passes."""

from __future__ import annotations

from ._boundary import core


def set_num_threads(n: int) -> None:
    """Threads used by the C++ core's parallel passes (n < 1: hardware concurrency).
    BLAS threads (inside the SVD) are SciPy's: control them with threadpoolctl."""
    core().set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads used by the C++ core's parallel passes."""
    return int(core().get_num_threads())
