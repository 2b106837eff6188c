"""Run every selected layer's compression on an executor, in a valid order.

Each layer goes through: statistics (re-collected from the partially compressed model
when ``sequential``), then either no change (untouched size), the checkpoint's
decomposition, the allocator's decomposition, or a solve task on the executor; then
the pair module is built and swapped in on this process (:func:`.layer.finish_layer`).
The result equals a serial run's exactly, whatever the order tasks finish in:

* without ``sequential`` the layers are independent (all fitted to the original
  model's statistics), so their solves all go out at once (at most the executor's
  ``max_in_flight``);
* with ``sequential`` layer k is re-calibrated only once the layers before it (module
  order) that its input depends on are swapped in, and a finished layer that feeds an
  earlier layer (module order) waits to be swapped in until that layer is calibrated:
  each layer sees exactly the inputs it sees in the serial loop
  (:mod:`.dependencies`).  Layers of one block that do not feed each other run at once.
  The serial executor keeps the plain module-order chain.

Memory: a layer's statistics are released (from ``cal.layers`` too) once it is swapped
in; under ``sequential`` the one-pass statistics of every layer but the first are
released before the first solve (each is re-collected when its turn comes), so after the
allocation at most the in-flight layers' statistics are held.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch.nn as nn

from ..calibrate import Calibration, CalibrationData, calibrate, iter_batches
from ..calibrate.correct import corrected_target, cross_moment
from ..calibrate.gated import gated_blocks
from ..report import LayerReport
from . import methods
from .layer import LayerJob, finish_layer, is_untouched, prepare_solve, untouched_report
from .options import Options
from .plan import LayerSize
from .tasks import solve_task

__all__ = ["run_layers"]

_UNTOUCHED = object()


def _order_constraints(job: LayerJob, names: list[str], data: CalibrationData, opts: Options,
                       parallel: bool) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(layers each layer's calibration waits for, layers each layer's swap waits to be
    calibrated) under ``sequential``; empty without it."""
    if not opts.calibration.sequential:
        return {n: set() for n in names}, {n: set() for n in names}
    if parallel:
        from .dependencies import layer_ancestors

        x = next(iter(iter_batches(data, opts.calibration.batch_size)))
        dev = opts.calibration.device
        anc = layer_ancestors(job.model, names, x if dev is None else x.to(dev))
    else:
        anc = {n: set(names[:i]) for i, n in enumerate(names)}
    pos = {n: i for i, n in enumerate(names)}
    wait = {n: {a for a in anc[n] if pos[a] < pos[n]} for n in names}
    hold = {n: {k for k in names if n in anc[k] and pos[k] < pos[n]} for n in names}
    return wait, hold


class _Run:
    """The state of one :func:`run_layers` call."""

    def __init__(self, job: LayerJob, selected: list[tuple[str, nn.Module]], plan: dict[str, LayerSize],
                 cal: Calibration, data: CalibrationData, opts: Options, executor: Any, checkpoint: Any) -> None:
        self.job, self.plan, self.cal, self.data, self.opts = job, plan, cal, data, opts
        self.ex, self.ck = executor, checkpoint
        self.names = [n for n, _ in selected]
        self.orig = dict(selected)
        self.method = methods.method_of_config(job.config)
        self.wait, self.hold = _order_constraints(job, self.names, data, opts, executor.max_in_flight > 1)
        self.stats: dict[str, Any] = {}  # started layers' statistics (None once swapped in)
        self.held: dict[str, Any] = {}
        self.reports: dict[str, LayerReport] = {}
        if opts.calibration.sequential:
            for name in self.names[1:]:
                cal.layers.pop(name, None)
        self.gated = ({n for b in gated_blocks(job.model) for n in (b.gate, b.up)}
                      if opts.calibration.gated_mlp == "product" else set())

    def start(self, name: str) -> None:
        """Calibrate (sequential) and finish at once, or submit the layer's solve."""
        if self.opts.calibration.sequential and name != self.names[0]:
            stats = calibrate(self.job.model, self.data, layers=[name], config=self.opts.calibration).layers[name]
            stats = self._corrected(name, stats)
            reusable = False
        else:
            stats, reusable = self.cal.layers[name], True
        self.stats[name] = stats
        size = self.plan[name]
        if is_untouched(stats, size):
            self.held[name] = _UNTOUCHED
        elif self.ck is not None and self.ck.has(name):
            self.held[name] = self.ck.load(name, tuple(size))
        else:
            reuse, problem, scale = prepare_solve(self.job, name, self.orig[name], stats, size, reusable)
            if reuse is None:
                self.ex.submit(name, solve_task, (self.method, self.job.config, problem, scale))
            else:
                self.finished(name, (reuse, float(reuse.info.seconds)))

    def _corrected(self, name: str, stats: Any) -> Any:
        """``stats`` with the error-corrected target weight under ``error_correction``
        (not for a gated MLP's gate / up, whose Gram is the product objective's)."""
        if not self.opts.calibration.error_correction or self.job.reference is None or name in self.gated:
            return stats
        C = cross_moment(self.job.reference, self.job.model, self.data, name, self.opts.calibration)
        return replace(stats, target_weight=corrected_target(stats.reference_weight(self.orig[name]), C, stats.gram))

    def finished(self, name: str, result: tuple[Any, float]) -> None:
        if self.ck is not None:
            self.ck.save(name, tuple(self.plan[name]), *result)
        self.held[name] = result

    def install_ready(self, bar: Any) -> None:
        """Swap in every held layer whose swap no longer has to wait, in module order."""
        for name in [n for n in self.names if n in self.held and self.hold[n] <= self.stats.keys()]:
            result = self.held.pop(name)
            orig, stats = self.orig[name], self.stats[name]
            if result is _UNTOUCHED:
                self.reports[name] = untouched_report(self.job, name, orig, stats)
            else:
                self.reports[name] = finish_layer(self.job, name, orig, stats, *result)
            self.stats[name] = None
            self.cal.layers.pop(name, None)
            if bar is not None:
                bar.update(1)

    def startable(self) -> list[str]:
        return [n for n in self.names if n not in self.stats and self.wait[n] <= self.reports.keys()]


def run_layers(job: LayerJob, selected: list[tuple[str, nn.Module]], plan: dict[str, LayerSize],
               cal: Calibration, data: CalibrationData, opts: Options, executor: Any,
               checkpoint: Any = None, bar: Any = None) -> list[LayerReport]:
    """Compress every selected layer (see the module doc); reports in module order.

    Args:
        executor: a started :class:`~lowrank_sparse.executors.Executor`.
        checkpoint: a :class:`~.checkpoint.Checkpoint` (finished layers are loaded from
            it and new ones written to it), or None.
        bar: a progress bar (``update(1)`` per finished layer), or None.
    """
    run = _Run(job, selected, plan, cal, data, opts, executor, checkpoint)
    while len(run.reports) < len(run.names):
        before = (len(run.stats), len(run.reports))
        for name in run.startable():
            if executor.pending() >= executor.max_in_flight:
                break
            run.start(name)
        run.install_ready(bar)
        if executor.pending():
            name, result = executor.next_done()
            run.finished(name, result)
        elif (len(run.stats), len(run.reports)) == before and len(run.reports) < len(run.names):
            raise RuntimeError("compress: the layer schedule stalled (a dependency cycle?)")
    return [run.reports[n] for n in run.names]
