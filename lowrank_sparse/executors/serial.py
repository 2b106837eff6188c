"""Every task run in this process, in submission order, when its result is asked for."""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable

from .base import Executor, TaskFn

__all__ = ["SerialExecutor"]


class SerialExecutor(Executor):
    """The default executor: ``next_done`` runs the oldest queued task and returns it,
    so tasks run one at a time, first in first out, with the process's own threads."""

    max_in_flight = 1

    def __init__(self) -> None:
        self._queue: deque[tuple[Hashable, TaskFn, Any]] = deque()

    def submit(self, key: Hashable, fn: TaskFn, payload: Any) -> None:
        self._queue.append((key, fn, payload))

    def pending(self) -> int:
        return len(self._queue)

    def next_done(self) -> tuple[Hashable, Any]:
        if not self._queue:
            raise RuntimeError("next_done() with no task pending")
        key, fn, payload = self._queue.popleft()
        return key, fn(payload)

    def shutdown(self) -> None:
        self._queue.clear()
