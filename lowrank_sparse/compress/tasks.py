"""The per-layer solve as a task an executor can run in another process."""

from __future__ import annotations

import time
from typing import Any

from ..calibrate import unfold_decomposition
from . import methods

__all__ = ["solve_task"]


def _registered(method: methods.Method) -> None:
    """Make ``method`` the registered one in this process (a Ray worker imports only
    the built-in methods; a method the caller registered or replaced travels with the
    task)."""
    try:
        if methods.get_method(method.name) == method:
            return
    except ValueError:
        pass
    methods.register_method(method.name, method.config_cls, method.solve, allocation_mode=method.allocation_mode,
                            solver_split=method.solver_split)


def solve_task(payload: tuple[methods.Method, Any, methods.LayerProblem, Any]) -> tuple[Any, float]:
    """The per-layer task: (method, config, problem, BatchNorm scale) ->
    (decomposition of the layer's own weight, solve seconds)."""
    method, config, problem, scale = payload
    _registered(method)
    t0 = time.perf_counter()
    dec = methods.solve_layer(config, problem)
    seconds = time.perf_counter() - t0
    return unfold_decomposition(dec, scale), seconds
