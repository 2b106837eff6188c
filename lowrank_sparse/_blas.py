"""The process's BLAS thread control (threadpoolctl), built once.

Building a ``ThreadpoolController`` scans the loaded shared libraries (1-7 ms here);
``threadpool_limits(...)`` builds one per call.  The core's solves, the AQ passes and
the budget's spectra limit BLAS around every call, so they share this controller.
SciPy's BLAS (the one the C++ core calls) is loaded first so that it is among the
libraries controlled."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

_CTL: list[Any] = []


def blas_controller() -> Any:
    """threadpoolctl controller of the loaded BLAS libraries, SciPy's included."""
    if not _CTL:
        import scipy.linalg.blas  # noqa: F401  (load SciPy's BLAS so threadpoolctl sees it)
        from threadpoolctl import ThreadpoolController

        _CTL.append(ThreadpoolController().select(user_api="blas"))
    return _CTL[0]


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """BLAS limited to ``n`` threads inside the block (restored after)."""
    with blas_controller().limit(limits=n):
        yield
