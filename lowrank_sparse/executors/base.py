"""The executor interface."""

from __future__ import annotations

from typing import Any, Callable, Hashable

__all__ = ["Executor", "TaskFn"]

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
