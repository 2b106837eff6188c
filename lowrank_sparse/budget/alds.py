"""ALDS allocation (Liebenwein, Maalouf, Feldman, Rus, NeurIPS 2021, arXiv 2107.11442).

Minimise the maximum relative layer error subject to the network budget.  Every layer has
a Pareto frontier of configurations (rank j per slice, slice count k from a small set such
as 1, 2, 4, 8 dividing in_channels, and in "lowrank_sparse" mode a sparse share); the
frontier already holds, for each size, the slice count (and split) with the lowest error,
which is ALDS's per-layer choice of k at the allocated size.  For a common error level eps
each layer takes its smallest configuration with error <= eps; the total size is monotone
in eps, so bisection over the sorted set of all frontier errors finds the smallest
achievable max error exactly.  Budget left over by the discrete steps is then spent
greedily on the layer with the currently largest error (the max stays minimal, the
others only improve).  Errors are Frobenius-relative (see curves.py); the paper uses the
operator norm for its bound.
"""

from __future__ import annotations

import heapq
import math
from typing import Optional, Sequence

import numpy as np

from .curves import LayerCurves


class Costs:
    """Sizes and MACs of frontier choices; budgets for the free layers (None: no constraint)."""

    def __init__(self, curves: Sequence[LayerCurves], bp: Optional[float], bm: Optional[float]) -> None:
        self.curves = list(curves)
        self.bp, self.bm = bp, bm

    def totals(self, idx: Sequence[int]) -> tuple[int, int]:
        p = sum(int(c.sizes[i]) for c, i in zip(self.curves, idx))
        f = sum(int(c.sizes[i]) * c.spatial for c, i in zip(self.curves, idx))
        return p, f

    def fits(self, p: float, f: float) -> bool:
        return (self.bp is None or p <= self.bp) and (self.bm is None or f <= self.bm)

    def feasible(self, idx: Sequence[int]) -> bool:
        return self.fits(*self.totals(idx))

    def norm_cost(self, layer: int, i: int) -> float:
        """Size of choice i of a layer, normalised by the budgets (sum over active constraints)."""
        c = self.curves[layer]
        s = float(c.sizes[i])
        out = 0.0
        if self.bp is not None:
            out += s / max(self.bp, 1.0)
        if self.bm is not None:
            out += s * c.spatial / max(self.bm, 1.0)
        return out


def level_indices(curves: Sequence[LayerCurves], eps: float) -> list[int]:
    """Per layer, the smallest configuration with error <= eps."""
    return [c.index_for_error(eps) for c in curves]


def minmax_level(costs: Costs) -> tuple[float, list[int]]:
    """Smallest common error level whose configuration meets the budget (bisection)."""
    levels = np.unique(np.concatenate([c.errors for c in costs.curves]))  # ascending
    lo, hi = 0, len(levels) - 1
    if not costs.feasible(level_indices(costs.curves, float(levels[hi]))):
        raise ValueError("budget infeasible even with the smallest configuration of every layer")
    while lo < hi:
        mid = (lo + hi) // 2
        if costs.feasible(level_indices(costs.curves, float(levels[mid]))):
            hi = mid
        else:
            lo = mid + 1
    eps = float(levels[lo])
    return eps, level_indices(costs.curves, eps)


def fill_max_error(costs: Costs, idx: list[int]) -> list[int]:
    """Spend leftover budget: repeatedly upgrade the layer with the largest error by one step."""
    idx = list(idx)
    p, f = costs.totals(idx)
    heap = [(-float(c.errors[i]), l) for l, (c, i) in enumerate(zip(costs.curves, idx)) if i + 1 < len(c)]
    heapq.heapify(heap)
    while heap:
        _, l = heapq.heappop(heap)
        c, i = costs.curves[l], idx[l]
        dp = int(c.sizes[i + 1] - c.sizes[i])
        if not costs.fits(p + dp, f + dp * c.spatial):
            continue  # budget only shrinks: this layer can never be upgraded again
        idx[l] = i + 1
        p, f = p + dp, f + dp * c.spatial
        if i + 2 < len(c):
            heapq.heappush(heap, (-float(c.errors[i + 1]), l))
    return idx


def alds_search(curves: Sequence[LayerCurves], bp: Optional[float], bm: Optional[float]) -> tuple[list[int], dict]:
    """Frontier indices minimising the max error under the budgets, plus info."""
    costs = Costs(curves, bp, bm)
    if not curves:
        return [], {"error_level": 0.0}
    eps, idx = minmax_level(costs)
    idx = fill_max_error(costs, idx)
    maxerr = max(float(c.errors[i]) for c, i in zip(curves, idx))
    return idx, {"error_level": eps, "max_error": maxerr if math.isfinite(maxerr) else None}
