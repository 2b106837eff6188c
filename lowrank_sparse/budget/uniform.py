"""Uniform allocation: every compressed layer keeps the same fraction rho of its dense size.

For a ratio rho each layer takes its largest frontier configuration with size <= rho*m*n
(in "lowrank_sparse" mode that is the best rank/sparse split at that size; slices = 1).
The largest rho whose total meets the budget is found exactly by bisection over the sorted
set of all attainable ratios; what the rounding leaves is spent one step at a time on
the layers with the lowest next ratio (at most one extra step each), so the ratios agree
up to one rank step (or one sparse-grid step) per layer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .alds import Costs
from .curves import LayerCurves


def ratio_indices(curves: Sequence[LayerCurves], rho: float) -> list[int]:
    """Per layer, the largest configuration with size <= rho * dense size."""
    return [c.index_for_size(rho * c.layer.m * c.layer.n * (1 + 1e-12)) for c in curves]


def uniform_search(curves: Sequence[LayerCurves], bp: Optional[float], bm: Optional[float],
                   bl: Optional[float] = None, latency: Optional[Sequence[np.ndarray]] = None) -> tuple[list[int], dict]:
    """Frontier indices at the largest common ratio that meets the budgets, plus info."""
    costs = Costs(curves, bp, bm, bl, latency)
    if not curves:
        return [], {"ratio": 1.0}
    rhos = np.unique(np.concatenate([c.sizes / float(c.layer.m * c.layer.n) for c in curves]))
    lo, hi = 0, len(rhos) - 1
    if not costs.feasible(ratio_indices(curves, float(rhos[0]))):
        raise ValueError("budget infeasible even with the smallest configuration of every layer")
    while lo < hi:  # largest feasible ratio
        mid = (lo + hi + 1) // 2
        if costs.feasible(ratio_indices(curves, float(rhos[mid]))):
            lo = mid
        else:
            hi = mid - 1
    rho = float(rhos[lo])
    idx = _fill_lowest_ratio(costs, ratio_indices(curves, rho))
    return idx, {"ratio": rho}


def _fill_lowest_ratio(costs: Costs, idx: list[int]) -> list[int]:
    """Spend what rounding left: upgrade the layer with the lowest kept ratio by one step
    while it fits (keeps the ratios equal up to one step)."""
    idx = list(idx)
    tot = costs.totals(idx)
    active = [l for l, c in enumerate(costs.curves) if idx[l] + 1 < len(c)]
    while active:
        l = min(active, key=lambda k: costs.curves[k].sizes[idx[k] + 1] / float(costs.curves[k].layer.m * costs.curves[k].layer.n))
        i = idx[l]
        d = costs.step(l, i, i + 1)
        if costs.fits(tot + d):
            idx[l] = i + 1
            tot = tot + d
        active.remove(l)  # at most one extra step per layer
    return idx
