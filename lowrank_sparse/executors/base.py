"""The executor interface and the ``executor=`` argument's resolution."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Hashable, Iterator, Union

__all__ = ["Executor", "resolve_executor", "running"]

#: a task: fn(payload) -> result; ``fn`` must be importable (pickled by reference).
TaskFn = Callable[[Any], Any]


class Executor:
    """Runs tasks ``fn(payload)`` and hands back their results as they finish.

    Life cycle: :meth:`start`, any number of :meth:`submit` / :meth:`next_done`,
    :meth:`shutdown` (also after an error).  ``key`` names a task in its result.
    """

    #: how many tasks may be in flight at once (the scheduler keeps at most this many)
    max_in_flight: int = 1

    def start(self) -> None:
        """Acquire what the tasks run on (a cluster, a pool); idempotent."""

    def submit(self, key: Hashable, fn: TaskFn, payload: Any) -> None:
        """Queue ``fn(payload)`` under ``key``."""
        raise NotImplementedError

    def pending(self) -> int:
        """Tasks submitted whose result was not yet returned by :meth:`next_done`."""
        raise NotImplementedError

    def next_done(self) -> tuple[Hashable, Any]:
        """(key, result) of a finished task (blocks until one is); a task's exception
        is raised here."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Release what :meth:`start` acquired (a cluster it started, not one it joined)."""


def resolve_executor(executor: Union[str, Executor, None]) -> Executor:
    """``"serial"`` (or None) -> :class:`SerialExecutor`, ``"ray"`` -> a
    :class:`~lowrank_sparse.executors.ray.RayExecutor` with default settings, an
    :class:`Executor` instance -> itself.

    Raises:
        ValueError: an unknown name.  TypeError: anything else.
    """
    from .serial import SerialExecutor

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
