"""Tasks on a Ray cluster: a local one started here, or an existing one joined.

Each task's payload goes through the object store (``ray.put``; the driver keeps no
second copy once the task is queued), runs as a ``@ray.remote`` task with
``num_cpus=cpus_per_task`` inside :func:`~lowrank_sparse.executors.threads.task_threads`
of the CPUs Ray assigned it, and comes back through ``ray.wait`` / ``ray.get``.  A task
whose worker process dies (killed, out of memory) is re-run up to ``max_retries`` times
by Ray; an exception the task raises (a ValueError, say) is not retried and is raised
by :meth:`RayExecutor.next_done` (Ray's error type derives from the original one).
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Optional

from .base import Executor, TaskFn
from .threads import assigned_cpus, task_threads

__all__ = ["RayExecutor", "run_task"]


def run_task(fn: TaskFn, payload: Any) -> Any:
    """The body of every Ray task: ``fn(payload)`` with the task's threads set."""
    with task_threads(assigned_cpus()):
        return fn(payload)


class RayExecutor(Executor):
    """Per-layer tasks on Ray.

    Args:
        address: an existing cluster to join ("auto", "ray://host:port", "host:port");
            None starts a local cluster (or uses the one ``ray.init`` already started in
            this process).
        num_cpus: CPUs of a local cluster (None: Ray's default, all of them).
        cpus_per_task: CPUs each task asks for; its torch / core / BLAS threads.
        max_retries: re-runs of a task whose worker died.
        max_in_flight: tasks queued at once (None: 2 x the cluster's CPUs /
            cpus_per_task), bounding the payloads held in the object store.
        init_kwargs: further ``ray.init`` keywords (e.g. ``object_store_memory``).
    """

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None, *, cpus_per_task: int = 1,
                 max_retries: int = 3, max_in_flight: Optional[int] = None,
                 init_kwargs: Optional[dict[str, Any]] = None) -> None:
        if int(cpus_per_task) < 1:
            raise ValueError(f"cpus_per_task must be >= 1, got {cpus_per_task}")
        if int(max_retries) < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_task, self.max_retries = int(cpus_per_task), int(max_retries)
        self._max_in_flight = max_in_flight
        self.init_kwargs = dict(init_kwargs or {})
        self._started_here = False
        self._remote: Any = None
        self._refs: dict[Any, Hashable] = {}

    @property
    def max_in_flight(self) -> int:  # type: ignore[override]
        if self._max_in_flight is not None:
            return max(1, int(self._max_in_flight))
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
        return max(1, 2 * cpus // self.cpus_per_task)

    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                          configure_logging=True)
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus
            kwargs.update(self.init_kwargs)
            ray.init(address=self.address, **kwargs)
            self._started_here = True
        if self._remote is None:
            self._remote = ray.remote(run_task).options(num_cpus=self.cpus_per_task, max_retries=self.max_retries,
                                                        retry_exceptions=False)

    def submit(self, key: Hashable, fn: TaskFn, payload: Any) -> None:
        import ray

        if self._remote is None:
            self.start()
        ref = self._remote.remote(fn, ray.put(payload))
        self._refs[ref] = key

    def pending(self) -> int:
        return len(self._refs)

    def next_done(self) -> tuple[Hashable, Any]:
        import ray

        if not self._refs:
            raise RuntimeError("next_done() with no task pending")
        (ref,), _ = ray.wait(list(self._refs), num_returns=1)
        key = self._refs.pop(ref)
        return key, ray.get(ref)

    def shutdown(self) -> None:
        import ray

        for ref in list(self._refs):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        self._refs.clear()
        self._remote = None
        if self._started_here and ray.is_initialized():
            ray.shutdown()
        self._started_here = False
