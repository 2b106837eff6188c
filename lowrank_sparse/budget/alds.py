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
    """Cost columns of the frontier choices and the budgets of the free layers.

    Columns (each only when its budget is not None): stored values (params), MACs
    (values times the layer's spatial size) and predicted seconds (``latency``: one
    array per layer, aligned with its frontier).  The searches only add and compare
    cost vectors, so a constraint is one more column.
    """

    def __init__(self, curves: Sequence[LayerCurves], bp: Optional[float], bm: Optional[float],
                 bl: Optional[float] = None, latency: Optional[Sequence[np.ndarray]] = None) -> None:
        self.curves = list(curves)
        self.bp, self.bm, self.bl = bp, bm, bl
        if bl is not None and (latency is None or len(latency) != len(self.curves)):
            raise ValueError("a latency budget needs one array of seconds per layer")
        budgets, floors = [], []
        for b, fl in ((bp, 1.0), (bm, 1.0), (bl, 1e-12)):
            if b is not None:
                budgets.append(float(b))
                floors.append(fl)
        self.budget = np.array(budgets, dtype=np.float64)
        self._scale = 1.0 / np.maximum(self.budget, np.array(floors, dtype=np.float64))
        self.cols: list[np.ndarray] = []
        for l, c in enumerate(self.curves):
            cols = []
            if bp is not None:
                cols.append(c.sizes.astype(np.float64))
            if bm is not None:
                cols.append(c.sizes.astype(np.float64) * c.spatial)
            if bl is not None:
                lat = np.asarray(latency[l], dtype=np.float64)
                if lat.shape != (len(c),):
                    raise ValueError(f"latency of layer {l} has shape {lat.shape}, its frontier {len(c)} entries")
                cols.append(lat)
            self.cols.append(np.stack(cols, axis=1) if cols else np.zeros((len(c), 0)))

    def totals(self, idx: Sequence[int]) -> np.ndarray:
        """Cost vector of a choice of one frontier index per layer."""
        tot = np.zeros(len(self.budget))
        for col, i in zip(self.cols, idx):
            tot = tot + col[int(i)]
        return tot

    def step(self, layer: int, i: int, j: int) -> np.ndarray:
        """Cost vector change when ``layer`` moves from choice i to j."""
        return self.cols[layer][int(j)] - self.cols[layer][int(i)]

    def fits(self, tot: np.ndarray) -> bool:
        return bool(np.all(tot <= self.budget))

    def feasible(self, idx: Sequence[int]) -> bool:
        return self.fits(self.totals(idx))

    def norm_cost(self, layer: int, i: int) -> float:
        """Cost of choice i of a layer, normalised by the budgets (sum over active constraints)."""
        return float(np.sum(self.cols[layer][int(i)] * self._scale))


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
    tot = costs.totals(idx)
    heap = [(-float(c.errors[i]), l) for l, (c, i) in enumerate(zip(costs.curves, idx)) if i + 1 < len(c)]
    heapq.heapify(heap)
    while heap:
        _, l = heapq.heappop(heap)
        c, i = costs.curves[l], idx[l]
        d = costs.step(l, i, i + 1)
        if not costs.fits(tot + d):
            continue  # budget only shrinks: this layer can never be upgraded again
        idx[l] = i + 1
        tot = tot + d
        if i + 2 < len(c):
            heapq.heappush(heap, (-float(c.errors[i + 1]), l))
    return idx


def alds_search(curves: Sequence[LayerCurves], bp: Optional[float], bm: Optional[float],
                bl: Optional[float] = None, latency: Optional[Sequence[np.ndarray]] = None) -> tuple[list[int], dict]:
    """Frontier indices minimising the max error under the budgets (params, MACs,
    seconds with ``latency``), plus info."""
    costs = Costs(curves, bp, bm, bl, latency)
    if not curves:
        return [], {"error_level": 0.0}
    eps, idx = minmax_level(costs)
    idx = fill_max_error(costs, idx)
    maxerr = max(float(c.errors[i]) for c, i in zip(curves, idx))
    return idx, {"error_level": eps, "max_error": maxerr if math.isfinite(maxerr) else None}
