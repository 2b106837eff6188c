"""Compress one layer: solve (or reuse the allocator's solve), build the pair module,
swap it into the model, and record it in a :class:`~lowrank_sparse.report.LayerReport`."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..calibrate import LayerStats, folded_problem, unfold_decomposition
from ..report import LayerReport
from ..structure import Structure
from . import methods
from .configs import MethodConfig
from .errors import output_error
from .plan import LayerSize, Solved

__all__ = ["LayerJob", "compress_layer", "finish_layer", "is_untouched", "positions", "prepare_solve",
           "untouched_report"]


@dataclass
class LayerJob:
    """What every layer's compression shares.

    Attributes:
        model: the copy being compressed (layers are swapped in place).
        config: the method config.
        structure: sparsity structure of S.
        device: where the solves run (None: each layer's own device).
        solved: the allocator's decompositions, reused when the plan picked them.
        samples: calibration examples seen (linear layers' MACs per sample).
        reference: a dense copy of the model (error-corrected targets), or None.
    """

    model: nn.Module
    config: MethodConfig
    structure: Structure
    device: Optional[Union[str, torch.device]]
    solved: Solved
    samples: int
    reference: Optional[nn.Module] = None


def positions(stats: LayerStats, samples: int) -> int:
    """Input vectors per sample of a linear layer (tokens x calls), >= 1."""
    return max(1, int(round(stats.count / max(samples, 1))))


def _macs(mod: nn.Module, stats: LayerStats, samples: int) -> int:
    """MACs per sample of ``mod`` (the original layer or its pair module)."""
    from ..nn.counts import module_macs

    if stats.kind == "conv":
        return module_macs(mod, stats.in_hw) * stats.calls
    return module_macs(mod) * positions(stats, samples)


def _new_report(job: LayerJob, name: str, orig: nn.Module, stats: LayerStats) -> LayerReport:
    from ..nn.counts import dense_params

    return LayerReport(
        name=name, kind=stats.kind, shape=tuple(orig.weight.shape), activation=stats.activation.describe(),
        method=methods.method_of_config(job.config).name, structure=job.structure.name, params_before=dense_params(orig),
        macs_before=_macs(orig, stats, job.samples), note=stats.activation.note,
    )  # fmt: skip


def _mark_untouched(rep: LayerReport, m: int, n: int) -> LayerReport:
    rep.status = "untouched"
    rep.rank, rep.density = min(m, n), 0.0
    rep.params_after, rep.macs_after = rep.params_before, rep.macs_before
    rep.note = "; ".join(x for x in (rep.note, "full rank or density 1: original layer kept") if x)
    return rep


def prepare_solve(job: LayerJob, name: str, orig: nn.Module, stats: LayerStats, size: LayerSize,
                  reusable: bool) -> tuple[Any, Optional[methods.LayerProblem], Optional[torch.Tensor]]:
    """(the allocator's decomposition, None, None) when it already ran this exact solve
    on the same data, else (None, the problem to solve, the BatchNorm scale to unfold)."""
    dev = orig.weight.device if job.device is None else torch.device(job.device)
    reuse = job.solved.pop((name, size.rank, size.density), None) if (
        reusable and size.slices == 1 and job.device is None) else None
    if reuse is not None:
        return reuse, None, None
    prob = folded_problem(stats, orig)
    if stats.sample is not None and stats.sample.device != dev:
        stats = replace(stats, sample=stats.sample.to(dev))
    bias = None if prob.bias is None else prob.bias.to(dev)
    problem = methods.layer_problem(prob.weight.to(dev), bias, stats, size.rank, size.density, size.slices,
                                    job.structure)
    return None, problem, prob.scale


def _solve(job: LayerJob, name: str, orig: nn.Module, stats: LayerStats, size: LayerSize,
           reusable: bool) -> tuple[Any, float]:
    """(decomposition of the layer's own weight, solve seconds)."""
    reuse, problem, scale = prepare_solve(job, name, orig, stats, size, reusable)
    if reuse is not None:
        return reuse, float(reuse.info.seconds)
    t0 = time.perf_counter()
    dec = methods.solve_layer(job.config, problem)
    seconds = time.perf_counter() - t0
    return unfold_decomposition(dec, scale), seconds


def _pair_module(orig: nn.Module, stats: LayerStats, dec: Any) -> nn.Module:
    from ..nn import LowRankSparseConv2d, LowRankSparseLinear

    if stats.kind == "conv":
        new = LowRankSparseConv2d.from_conv(orig, dec)
    else:
        new = LowRankSparseLinear.from_decomposition(dec, bias=orig.bias)
    new = new.to(device=orig.weight.device, dtype=orig.weight.dtype)
    new.train(orig.training)
    return new


def is_untouched(stats: LayerStats, size: LayerSize) -> bool:
    """A size that leaves the layer as it is (full rank, or density 1)."""
    return size.rank >= min(stats.weight_shape) or size.density >= 1.0


def untouched_report(job: LayerJob, name: str, orig: nn.Module, stats: LayerStats) -> LayerReport:
    """The report of a layer that keeps its original module."""
    return _mark_untouched(_new_report(job, name, orig, stats), *stats.weight_shape)


def compress_layer(job: LayerJob, name: str, orig: nn.Module, stats: LayerStats, size: LayerSize,
                   reusable: bool = True) -> LayerReport:
    """Replace layer ``name`` of ``job.model`` at ``size`` and report it.

    A size that leaves the layer untouched (full rank, or density 1) keeps the
    original module.  ``reusable``: ``stats`` are the statistics the allocator saw, so
    its decomposition at this size may be reused.
    """
    if is_untouched(stats, size):
        return untouched_report(job, name, orig, stats)
    dec, seconds = _solve(job, name, orig, stats, size, reusable)
    return finish_layer(job, name, orig, stats, dec, seconds)


def finish_layer(job: LayerJob, name: str, orig: nn.Module, stats: LayerStats, dec: Any,
                 seconds: float) -> LayerReport:
    """Build the pair module of the solved layer ``name`` (``dec``: decomposition of its
    own weight), swap it into ``job.model`` and report it."""
    m, n = stats.weight_shape
    rep = _new_report(job, name, orig, stats)
    new = _pair_module(orig, stats, dec)
    err, on = output_error(stats, orig, new)
    job.model.set_submodule(name, new)
    rep.rank, rep.slices = int(new.rank), int(new.slices)
    nnz = 0 if new.sparse is None else int(new.sparse.nnz)
    rep.density = nnz / float(m * n)
    rep.params_after = int(new.num_params())
    rep.index_bytes = int(new.num_index_bytes(packed=True))  # as saved
    rep.macs_after = _macs(new, stats, job.samples)
    rep.output_error_after, rep.error_on = err, on
    rep.iterations, rep.converged = int(dec.info.iterations), bool(dec.info.converged)
    rep.seconds = seconds
    return rep
