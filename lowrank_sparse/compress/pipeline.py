"""compress(): replace a trained model's layers by low-rank + sparse pairs.

Pipeline (one call of :func:`compress`):

1. ``new = copy.deepcopy(model)``: the input model is never modified.
2. Select (:mod:`.selection`): every ``nn.Linear`` and ``nn.Conv2d`` with
   ``groups == 1``, filtered by ``include`` / ``exclude`` (fnmatch patterns on
   qualified names), ``filter_fn`` and ``keep_first_last``.
3. Calibrate (:func:`lowrank_sparse.calibrate.calibrate`): ONE pass of the
   calibration data through the (still uncompressed) copy collects every selected
   layer's input Gram matrix, mean and input subsample, and its activation.  All
   layers are therefore fitted to the inputs they see in the original network, as in
   Ma et al. (arXiv 1807.10119), where each layer is approximated independently.
   With ``sequential=True`` the statistics of each layer are instead re-collected
   from the partially compressed copy right before that layer is fitted (the layer
   then sees the inputs the compressed network will feed it; one calibration pass
   per layer, so slower).
4. Plan (:mod:`.plan`): per-layer ranks / densities from a
   :class:`~lowrank_sparse.budget.Budget` target through
   :func:`lowrank_sparse.budget.allocate` (``allocation`` = "alds" / "enc" /
   "uniform"), or explicit ``rank`` / ``density``.
5. Compress each layer (:mod:`.layer`): solve ``W ~ U V + S`` against the
   post-activation output on the calibration inputs with the method's handler
   (:mod:`.methods`), build the pair module, swap it into the copy.  A layer whose
   size leaves it untouched (full rank, or density 1) keeps its original module.
6. Report: per-layer :class:`~lowrank_sparse.report.LayerReport` (counts from the
   modules themselves, output error measured in torch from the original weights and
   the new module) and whole-model totals.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..calibrate import Calibration, CalibrationConfig, CalibrationData, calibrate, iter_batches
from ..executors.resolve import running
from ..report import CompressionReport, LayerReport
from .configs import DensitySpec, MethodConfig, RankSpec
from .layer import LayerJob
from .options import Options, resolve_options
from .plan import LayerSize, Solved, allocation_plan, check_plan, explicit_plan
from .selection import FilterFn, Patterns, select_layers

__all__ = ["compress"]


def compress(
    model: nn.Module,
    calibration_data: CalibrationData,
    target: Any = None,
    *,
    allocation: str = "alds",
    rank: RankSpec = None,
    density: DensitySpec = None,
    structure: Optional[Any] = None,
    method: Optional[str] = None,
    include: Patterns = None,
    exclude: Patterns = None,
    filter_fn: Optional[FilterFn] = None,
    keep_first_last: bool = True,
    backend: Optional[str] = None,
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    seed: Optional[int] = None,
    progress: Optional[bool] = None,
    device: Optional[Union[str, torch.device]] = None,
    sample_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    sequential: Optional[bool] = None,
    solver_options: Optional[dict[str, Any]] = None,
    config: Optional[MethodConfig] = None,
    calibration: Optional[CalibrationConfig] = None,
    executor: Any = "serial",
    checkpoint_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> tuple[nn.Module, CompressionReport]:
    """Compress a trained model: each selected layer's W becomes L + S.

    Args:
        model: the trained network; never modified (a deep copy is compressed).
        calibration_data: inputs that represent the data the model will see: a
            tensor (split in ``batch_size`` rows), a list of tensors or (x, y) tuples,
            or a DataLoader; only inputs are used.
        target: a :class:`lowrank_sparse.budget.Budget` (fractions of the whole
            model's parameters and/or MACs to keep); ``allocation`` then chooses each
            layer's rank / density.  None: use ``rank`` / ``density``.
        allocation: "alds", "enc" or "uniform" (with ``target``).
        rank, density: explicit per-layer sizes (see :mod:`lowrank_sparse.compress.plan`);
            used only without ``target``.
        structure: sparsity structure of S ("unstructured" by default, "row",
            "column", "channel", "N:M").
        method: "lowrank_sparse" (the ADMM solver; default), "rank_only" or
            "sparse_only" (the baselines of :mod:`lowrank_sparse.baselines`), the
            peers "wanda", "sparsegpt", "svd_llm" and "oats" (:mod:`lowrank_sparse.peers`,
            sparse-only / rank-only / L + S at the same parameter accounting), or
            any name added with :func:`~lowrank_sparse.compress.register_method`.
        include, exclude: fnmatch patterns (or lists) on qualified layer names; a
            layer is compressed if it matches ``include`` (when given) and not
            ``exclude``.
        filter_fn: filter_fn(name, module) -> bool; layers it returns False for are
            left out (applied after include / exclude).
        keep_first_last: leave the first and the last compressible layer (module
            order) untouched when the model has at least 3 of them; the usual choice,
            as they are small and sensitive.
        backend, max_iter, tol, seed: solver settings (defaults "auto", 300, 1e-4, 0);
            ``seed`` also seeds the calibration subsample.
        progress: tqdm bar over layers (None: only when stderr is a terminal).
        device: where calibration and the solves run (default: the model's device);
            when given, the returned model is moved there (the input model is not).
        sample_size: input columns kept per layer for the activation-aware objective
            (default 8192, see :mod:`lowrank_sparse.calibrate`).
        batch_size: rows per batch when ``calibration_data`` is a tensor (default 128).
        sequential: re-collect each layer's statistics from the partially compressed
            copy right before fitting it (see the module doc).
        solver_options: further solver settings, any field of
            :class:`~lowrank_sparse.SolverConfig` (e.g. ``relaxed``).
        config: the method's config (:class:`~lowrank_sparse.LowRankSparseConfig`,
            :class:`~lowrank_sparse.RankOnlyConfig`, :class:`~lowrank_sparse.SparseOnlyConfig`);
            the keywords above override its fields when given.
        calibration: a :class:`~lowrank_sparse.CalibrationConfig`; ``device``,
            ``sample_size``, ``batch_size``, ``sequential`` and ``seed`` override it.
        executor: where the per-layer solves run: "serial" (this process, in order),
            "ray" (tasks on a local Ray cluster) or an executor object such as
            :class:`~lowrank_sparse.executors.RayExecutor` (address, CPUs, retries);
            the allocator's solver probes run there too, as one batch; the result
            is the same bitwise (see :mod:`lowrank_sparse.compress.schedule`).
        checkpoint_dir: a folder where every finished layer is written; a rerun with
            the same folder and inputs skips them and gives the same result bitwise
            (see :mod:`lowrank_sparse.compress.checkpoint`).

    Returns:
        (new_model, report).  ``new_model`` has the training flags of ``model``.

    Raises:
        ValueError: bad arguments, a model without compressible layers, empty or
            ill-shaped calibration data, NaN/Inf activations (naming the layer), a
            checkpoint folder written by a different run (naming the fields).
        TypeError: wrong argument types.
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opts = resolve_options(
        target=target, method=method, config=config, rank=rank, density=density, structure=structure,
        solver=dict(backend=backend, max_iter=max_iter, tol=tol, seed=seed), solver_options=solver_options,
        calibration=calibration,
        calibration_overrides=dict(device=device, sample_size=sample_size, batch_size=batch_size, seed=seed,
                                   sequential=sequential),
    )  # fmt: skip
    new = copy.deepcopy(model)
    if opts.calibration.device is not None:
        new = new.to(opts.calibration.device)
    selected, skipped = select_layers(new, include=include, exclude=exclude, filter_fn=filter_fn,
                                      keep_first_last=keep_first_last)
    cal = calibrate(new, calibration_data, layers=[n for n, _ in selected], config=opts.calibration)
    for k, v in cal.skipped.items():
        skipped.setdefault(k, v)
    selected = [(n, m) for n, m in selected if n in cal.layers]
    input_shape = _input_shape(calibration_data, opts.calibration.batch_size)
    totals = _model_totals(model, new, input_shape)
    solved: Solved = {}
    with running(executor) as ex:
        plan, table = _plan(target, allocation, opts, selected, cal, totals, solved, ex,
                            _sensitivity(target, new, calibration_data, selected, opts))
        reference = copy.deepcopy(new) if opts.calibration.error_correction else None
        job = LayerJob(new, opts.config, opts.structure, opts.calibration.device, solved, cal.samples, reference)
        reports = _compress_layers(job, selected, plan, cal, calibration_data, opts, progress, ex,
                                   _checkpoint(checkpoint_dir, model, opts, target, allocation, selected))
    report = _report(reports, skipped, new, input_shape, opts, target, allocation, table, cal, totals)
    report.seconds = time.perf_counter() - t_start
    return new, report


def _input_shape(data: CalibrationData, batch_size: int) -> tuple[int, ...]:
    x = next(iter(iter_batches(data, batch_size)))
    return tuple(int(s) for s in x.shape[1:])


def _model_totals(model: nn.Module, new: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters of ``model``, MACs per sample of its copy ``new``) before compression."""
    from ..nn.counts import model_macs, model_params

    return model_params(model), int(model_macs(new, input_shape))


def _sensitivity(target: Any, model: nn.Module, data: CalibrationData, selected: list[tuple[str, nn.Module]],
                 opts: Options) -> Optional[dict[str, float]]:
    """Each selected layer's end-to-end sensitivity under ``Budget(weighting="sensitivity")``, else None."""
    if target is None or target.weighting != "sensitivity":
        return None
    from ..budget.sensitivity import layer_sensitivities

    return layer_sensitivities(model, data, [n for n, _ in selected], batch_size=opts.calibration.batch_size,
                               seed=opts.calibration.seed)


def _plan(target: Any, allocation: str, opts: Options, selected: list[tuple[str, nn.Module]], cal: Calibration,
          totals: tuple[int, int], solved: Solved, executor: Any,
          sensitivity: Optional[dict[str, float]] = None) -> tuple[dict[str, LayerSize], Optional[str]]:
    """(size per selected layer, the allocator's table or None); the allocator's solver
    probes run on ``executor``."""
    if target is not None:
        plan, table = allocation_plan(target, allocation, opts.config, opts.structure, selected, cal.layers,
                                      totals, solved, executor, opts.calibration.sequential, sensitivity)
    else:
        plan = explicit_plan([n for n, _ in selected], cal.layers, getattr(opts.config, "rank", None),
                             getattr(opts.config, "density", None))
        table = None
    check_plan(plan)
    return plan, table


def _progress(iterable: Any, progress: Optional[bool], total: int) -> Any:
    """A tqdm bar over ``iterable`` (None: a bar to update by hand), or ``iterable``
    itself (None) when no bar is shown."""
    show = progress if progress is not None else sys.stderr.isatty()
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc="compress", unit="layer", leave=False)


def _checkpoint(folder: Any, model: nn.Module, opts: Options, target: Any, allocation: str,
                selected: list[tuple[str, nn.Module]]) -> Any:
    """The run's checkpoint folder (manifest checked or written), or None."""
    if folder is None:
        return None
    from .checkpoint import Checkpoint, run_manifest

    manifest = run_manifest(model, target=target, allocation=allocation, method=opts.method.name,
                            config=opts.config, structure=opts.structure.name, calibration=opts.calibration,
                            layers=[n for n, _ in selected])
    return Checkpoint.open(folder, manifest)


def _compress_layers(job: LayerJob, selected: list[tuple[str, nn.Module]], plan: dict[str, LayerSize],
                     cal: Calibration, data: CalibrationData, opts: Options, progress: Optional[bool],
                     executor: Any, checkpoint: Any) -> list[LayerReport]:
    """Each selected layer, solved on the started ``executor`` (statistics re-collected
    when sequential)."""
    from .schedule import run_layers

    bar = _progress(None, progress, len(selected))
    try:
        return run_layers(job, selected, plan, cal, data, opts, executor, checkpoint, bar)
    finally:
        if bar is not None:
            bar.close()


def _report(reports: list[LayerReport], skipped: dict[str, str], new: nn.Module, input_shape: tuple[int, ...],
            opts: Options, target: Any, allocation: str, table: Optional[str], cal: Calibration,
            totals: tuple[int, int]) -> CompressionReport:
    """The whole-model record; ``totals`` = (params, MACs per sample) before compression."""
    from ..nn.counts import model_macs, model_params

    c = opts.calibration
    return CompressionReport(
        layers=reports,
        skipped=skipped,
        params_before=totals[0],
        params_after=model_params(new),
        macs_before=totals[1],
        macs_after=int(model_macs(new, input_shape)),
        index_bytes=sum(r.index_bytes for r in reports),
        method=opts.method.name,
        structure=opts.structure.name,
        target=None if target is None else target.as_dict(),
        allocation=allocation if target is not None else None,
        allocation_table=table,
        calibration={"batches": cal.batches, "samples": cal.samples, "detection": cal.detection,
                     "detection_note": cal.detection_note, "sample_size": c.sample_size,
                     "sequential": c.sequential, "error_correction": c.error_correction},
    )  # fmt: skip
