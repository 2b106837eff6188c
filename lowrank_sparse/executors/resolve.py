"""The ``executor=`` argument: a name or an instance -> a started executor."""

from __future__ import annotations

import contextlib
from typing import Iterator, Union

from .base import Executor
from .serial import SerialExecutor

__all__ = ["resolve_executor", "running"]


def resolve_executor(executor: Union[str, Executor, None]) -> Executor:
    """``"serial"`` (or None) -> :class:`SerialExecutor`, ``"ray"`` -> a
    :class:`~lowrank_sparse.executors.ray.RayExecutor` with default settings, an
    :class:`Executor` instance -> itself.

    Raises:
        ValueError: an unknown name.  TypeError: anything else.
    """
    if executor is None or executor == "serial":
        return SerialExecutor()
    if executor == "ray":
        from .ray import RayExecutor

        return RayExecutor()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, str):
        raise ValueError(f"unknown executor {executor!r}; use 'serial', 'ray' or an Executor instance")
    raise TypeError(f"executor must be 'serial', 'ray' or an Executor, got {type(executor).__name__}")


@contextlib.contextmanager
def running(executor: Union[str, Executor, None]) -> Iterator[Executor]:
    """``with running(executor) as ex:`` the resolved executor, started, and shut down
    when the block ends (normally or by an exception)."""
    ex = resolve_executor(executor)
    ex.start()
    try:
        yield ex
    finally:
        ex.shutdown()
