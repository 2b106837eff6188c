"""A task's threads: torch's, the C++ core's and BLAS's set to the CPUs Ray gave it."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

__all__ = ["assigned_cpus", "task_threads"]


def assigned_cpus() -> Optional[int]:
    """Whole CPUs assigned to the running Ray task (>= 1), or None outside a Ray task."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        res = ray.get_runtime_context().get_assigned_resources()
    except Exception:  # not in a Ray worker, or ray missing
        return None
    cpus = res.get("CPU")
    return None if cpus is None else max(1, int(cpus))


@contextlib.contextmanager
def task_threads(n: Optional[int]) -> Iterator[None]:
    """Inside the block torch, the native core and BLAS use at most ``n`` threads
    (None: unchanged).  The solvers' default ``threads`` is torch.get_num_threads(), so
    they follow."""
    if n is None:
        yield
        return
    import torch

    from .._blas import blas_threads

    from ..ops import threads as core_threads

    old, old_core = torch.get_num_threads(), core_threads.get_num_threads()
    torch.set_num_threads(n)
    core_threads.set_num_threads(n)
    try:
        with blas_threads(n):
            yield
    finally:
        torch.set_num_threads(old)
        core_threads.set_num_threads(old_core)
