"""Size against speed: the frontiers a latency budget searches over, and the pick among them.

Without a latency budget a layer's frontier keeps, for each size, its most accurate
configuration (:func:`curves.build_curves`).  With one that is not enough: at small
layers the most accurate split of a size is often S-heavy and slower than the dense
product, while rank only at the same size runs twice as fast, so a frontier by size hides
the configurations a latency target needs.

Here each layer's candidates (:func:`curves.candidate_configs`) go on several frontiers,
each ordered by one weighted cost

    cost_w = (1 - w) * (size / size budget + MACs / MACs budget) + w * seconds / latency budget

(the size terms only for the budgets that are set; with neither, w = 1 alone), for every
w in :data:`WEIGHTS` and for three candidate sets: all of the mode's candidates, rank
only, S only (the last two in "lowrank_sparse" mode), so that L + S is never worse than
either part on the search's own objective.  The allocation method's search runs on each
family, and the feasible result with the best objective is kept (ties: the first
family, size-ordered over all candidates).  Every family's seconds are the candidates'
own predictions (no running maximum), so the budgets hold exactly as predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import InfeasibleBudget
from .curves import Configs, LayerCurves, frontier
from .enc import network_metric
from .latency import LayerTimes
from .spec import LayerSpec

#: weights of the seconds against the size in the families' costs
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)

#: search(curves, params budget, MACs budget, seconds budget, seconds columns) -> (indices, info)
Search = Callable[..., tuple[Sequence[int], dict]]


@dataclass
class Family:
    """One frontier per layer under one cost: candidate set, weight of the seconds, the
    frontiers and their entries' predicted seconds (aligned)."""

    subset: str
    weight: float
    curves: list[LayerCurves]
    seconds: list[np.ndarray]


@dataclass
class Budgets:
    """What the allocated layers may spend: stored values, MACs, seconds (None: no budget)."""

    params: Optional[float]
    macs: Optional[float]
    seconds: float

    def size_cost(self, layer: LayerSpec, sizes: np.ndarray) -> np.ndarray:
        cost = np.zeros(len(sizes))
        if self.params is not None:
            cost += sizes / max(self.params, 1.0)
        if self.macs is not None:
            cost += sizes * float(layer.spatial) / max(self.macs, 1.0)
        return cost


def _subsets(mode: str, cfg: Configs) -> dict[str, np.ndarray]:
    """Masks of the candidate sets each family is built on."""
    sets = {"all": np.ones(len(cfg.sizes), dtype=bool)}
    if mode == "lowrank_sparse":
        sets["rank only"] = cfg.nnz == 0
        sets["S only"] = cfg.ranks == 0
    return sets


def families(layers: Sequence[LayerSpec], configs: Sequence[Configs], times: Sequence[LayerTimes],
             mode: str, budgets: Budgets, sensitivity: Sequence[float]) -> list[Family]:
    """Every (candidate set, weight) family of frontiers (see the module docstring);
    ``sensitivity`` weights each layer's errors as the allocator compares them."""
    sized = budgets.params is not None or budgets.macs is not None
    weights = WEIGHTS if sized else (1.0,)
    per_layer = []
    for l, cfg, t, sens in zip(layers, configs, times, sensitivity):
        secs = t.seconds_many(cfg.ranks, cfg.densities, cfg.slices) / budgets.seconds
        size = budgets.size_cost(l, cfg.sizes.astype(np.float64))
        dense = (float(budgets.size_cost(l, np.array([float(l.m * l.n)]))[0]), t.dense / budgets.seconds)
        per_layer.append((l, cfg, t, sens, secs, size, dense, _subsets(mode, cfg)))
    out = []
    for name in _subsets(mode, configs[0]) if configs else ("all",):
        for w in weights:
            curves, cols = [], []
            for l, cfg, t, sens, secs, size, dense, sets in per_layer:
                mask = sets[name]
                c = frontier(l, cfg.subset(mask), (1.0 - w) * size[mask] + w * secs[mask],
                             (1.0 - w) * dense[0] + w * dense[1]).weighted(sens)
                curves.append(c)
                cols.append(_entry_seconds(c, t))
            out.append(Family(name, w, curves, cols))
    return out


def _entry_seconds(c: LayerCurves, t: LayerTimes) -> np.ndarray:
    """Predicted seconds of each frontier entry (dense entry: the original layer)."""
    secs = t.seconds_many(c.ranks, c.nnz / float(c.layer.m * c.layer.n), c.slices)
    return np.where(c.dense, t.dense, secs)


def objective(method: str, curves: Sequence[LayerCurves], idx: Sequence[int], info: dict) -> float:
    """The method's own criterion of a result, lower is better: ALDS the largest layer
    error, ENC minus the network metric, uniform minus the common size ratio."""
    if method == "enc":
        return -network_metric(curves, idx)
    if method == "uniform":
        return -float(info.get("ratio", 0.0))
    return max((float(c.errors[i]) for c, i in zip(curves, idx)), default=0.0)


def best_family(method: str, search: Search, fams: Sequence[Family], budgets: Budgets
                ) -> tuple[Family, list[int], dict]:
    """Run ``search`` on every family; the feasible result with the lowest
    :func:`objective` (its family, indices, info with a ``tradeoff`` entry).

    Raises:
        ValueError: when no family meets every budget.
    """
    best = None
    tried = []
    for f in fams:
        try:
            idx, info = search(f.curves, budgets.params, budgets.macs, budgets.seconds, f.seconds)
        except ValueError:
            tried.append((f.subset, f.weight, None))
            continue
        score = objective(method, f.curves, idx, info)
        tried.append((f.subset, f.weight, score))
        if best is None or score < best[0] - 1e-12 * max(1.0, abs(best[0])):
            best = (score, f, list(idx), dict(info))
    if best is None:
        raise InfeasibleBudget("infeasible targets together: each budget alone can be met by some configuration "
                               f"of every layer, but none of the {len(fams)} size/latency trade-offs searched meets "
                               "all of them at once; loosen one of them", "together", None, None)
    score, f, idx, info = best
    info["tradeoff"] = {"subset": f.subset, "weight": f.weight, "objective": score,
                        "tried": [{"subset": s, "weight": w, "objective": o} for s, w, o in tried]}
    return f, idx, info
