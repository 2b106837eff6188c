"""Network-wide budget allocation: from one target for the whole model to per-layer ranks,
densities and (ALDS) slice counts.

    from lowrank_sparse.budget import Budget, LayerSpec, allocate
    alloc = allocate(layers, Budget(params=0.25), "alds", total_params=..., total_macs=...)
    print(alloc.table())

Budgets: fractions of the whole model's parameters, MACs and / or measured latency
(:mod:`lowrank_sparse.budget.latency`: per-layer timing tables, each candidate at its
faster exact form).  Methods: "alds" (min-max error, with channel slicing), "enc" (max product of kept
spectral energy), "uniform" (same ratio everywhere).  Modes: "lowrank_sparse" (per-layer
rank/sparse split chosen from the error curves), "rank_only", "sparse_only".  Counting
formulas (parameters; multiply-accumulates, MACs): :mod:`lowrank_sparse.budget.spec`;
error curves: :mod:`lowrank_sparse.budget.curves`; the allocation itself:
:mod:`lowrank_sparse.budget.allocator`.
"""

from __future__ import annotations

from .alds import alds_search
from .allocator import METHODS as _METHODS
from .allocator import MODES as _MODES
from .allocator import Override, allocate
from .curves import ErrorFn, LayerCurves, _config_error, activation_error_scale, build_curves, config_error
from .spectra import CurveCache
from .enc import enc_search, network_metric
from .latency import LatencyModel, LayerTimes
from .spec import (Allocation, Budget, LayerAllocation, LayerSpec, layer_flops, layer_macs, layer_params,
                   lowrank_params, sparse_nnz)
from .uniform import uniform_search

__all__ = [
    "Allocation", "Budget", "CurveCache", "LatencyModel", "LayerAllocation", "LayerSpec", "LayerTimes",
    "activation_error_scale", "allocate",
    "build_curves",
    "layer_flops", "layer_macs", "layer_params", "lowrank_params", "network_metric", "sparse_nnz",
]
