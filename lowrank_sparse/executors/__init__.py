"""Where the per-layer solves run: in this process, or as tasks on a Ray cluster.

Modules, one job each:

* :mod:`.base`: the :class:`Executor` interface (submit a task, wait for the next one
  that finished);
* :mod:`.resolve`: :func:`resolve_executor` ("serial", "ray" or an instance) and
  :func:`running` (started for a ``with`` block);
* :mod:`.serial`: :class:`SerialExecutor`, every task run in order in this process;
* :mod:`.ray`: :class:`RayExecutor`, tasks on a local or an existing Ray cluster
  (payloads through the object store, retries when a worker dies);
* :mod:`.threads`: a task's torch / core / BLAS threads set to the CPUs it was given.

The executors know nothing about compression: a task is ``fn(payload)`` with a
picklable module-level ``fn``; :mod:`lowrank_sparse.compress.schedule` decides which
tasks run when.
"""

from .base import Executor
from .resolve import resolve_executor, running
from .serial import SerialExecutor

__all__ = ["Executor", "RayExecutor", "SerialExecutor", "resolve_executor", "running"]


def __getattr__(name: str):  # RayExecutor without importing ray at package import
    if name == "RayExecutor":
        from .ray import RayExecutor

        return RayExecutor
    raise AttributeError(name)
