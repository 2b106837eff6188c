"""ENC allocation (Kim, Khan, Kyung, "Efficient Neural Network Compression", CVPR 2019).

Accuracy metric of a layer = fraction of (whitened) spectral energy kept,
``a = sum_{i<=j} s_i^2 / sum_i s_i^2 = 1 - e^2`` (for L + S and sparse-only
configurations the same ``1 - e^2`` of the predicted error); network metric = product of
the layer metrics.

* ENC-Map: sweep a common per-layer metric level (bisection) until the configuration
  meets the MACs/params target in one shot; leftover budget goes, greedily, to the
  upgrade with the best metric gain per cost.
* ENC-Model (refinement): build candidate configurations near the target - the
  Lagrangian optimum of sum(log a) - lambda * cost (bisection on lambda) with greedy fill,
  and exchange-refined versions of both candidates (move one step up in one layer and one
  or more steps down in another while the budget holds and the metric rises) - and keep
  the one with the highest network metric.  ENC-Inf (validation accuracy of each
  candidate) is left to the caller.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .alds import Costs, minmax_level
from .curves import LayerCurves


def _logmetric(c: LayerCurves) -> np.ndarray:
    return np.log(np.clip(1.0 - c.errors**2, 1e-300, 1.0))


def network_metric(curves: Sequence[LayerCurves], idx: Sequence[int]) -> float:
    """Product over layers of (1 - e^2)."""
    return float(math.exp(sum(float(_logmetric(c)[i]) for c, i in zip(curves, idx))))


def _greedy_gain(costs: Costs, idx: list[int], logm: list[np.ndarray]) -> list[int]:
    """Upgrade (any number of steps) where metric gain per normalised cost is best, while it fits."""
    idx = list(idx)
    tot = costs.totals(idx)
    while True:
        best, choice = 0.0, None
        for l, c in enumerate(costs.curves):
            i = idx[l]
            if i + 1 >= len(c):
                continue
            nxt = np.arange(i + 1, min(len(c), i + 65))
            dv = costs.cols[l][nxt] - costs.cols[l][i]
            ok = np.all(tot[None, :] + dv <= costs.budget[None, :], axis=1)
            if not ok.any():
                continue
            nxt = nxt[ok]
            dc = np.array([costs.norm_cost(l, int(t)) for t in nxt]) - costs.norm_cost(l, i)
            gain = (logm[l][nxt] - logm[l][i]) / np.maximum(dc, 1e-300)
            k = int(np.argmax(gain))
            if gain[k] > best:
                best, choice = float(gain[k]), (l, int(nxt[k]))
        if choice is None:
            return idx
        l, t = choice
        tot = tot + costs.step(l, idx[l], t)
        idx[l] = t


def _lagrange(costs: Costs, logm: list[np.ndarray]) -> Optional[list[int]]:
    """argmax per layer of log a - lam * cost, lam bisected (log scale) to meet the budget."""
    ncost = [np.array([costs.norm_cost(l, i) for i in range(len(c))]) for l, c in enumerate(costs.curves)]

    def pick(lam: float) -> list[int]:
        return [int(np.argmax(lm - lam * nc)) for lm, nc in zip(logm, ncost)]

    lo, hi = -30.0, 30.0  # log10 lambda
    if not costs.feasible(pick(10.0**hi)):
        return None
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if costs.feasible(pick(10.0**mid)):
            hi = mid
        else:
            lo = mid
    return pick(10.0**hi)


def _exchange(costs: Costs, idx: list[int], logm: list[np.ndarray], rounds: int = 200) -> list[int]:
    """Pairwise exchange: one step up in layer a, the fewest steps down in layer b that fit."""
    idx = list(idx)
    tot = costs.totals(idx)
    L = len(idx)
    for _ in range(rounds):
        improved = False
        for a in range(L):
            ca, ia = costs.curves[a], idx[a]
            if ia + 1 >= len(ca):
                continue
            up = float(logm[a][ia + 1] - logm[a][ia])
            da = costs.step(a, ia, ia + 1)
            for b in range(L):
                if b == a:
                    continue
                ib = idx[b]
                for jb in range(ib, max(-1, ib - 65), -1):
                    db = costs.step(b, ib, jb)
                    if costs.fits(tot + da + db):
                        break
                else:
                    continue
                down = float(logm[b][jb] - logm[b][ib])
                if up + down > 1e-12:
                    idx[a], idx[b] = ia + 1, jb
                    tot = tot + da + db
                    improved = True
                    break
            if improved:
                break
        if not improved:
            break
    return idx


def enc_search(curves: Sequence[LayerCurves], bp: Optional[float], bm: Optional[float],
               bl: Optional[float] = None, latency: Optional[Sequence[np.ndarray]] = None) -> tuple[list[int], dict]:
    """ENC-Map + ENC-Model refinement (params, MACs, seconds with ``latency``);
    returns frontier indices and info."""
    costs = Costs(curves, bp, bm, bl, latency)
    if not curves:
        return [], {"metric": 1.0}
    logm = [_logmetric(c) for c in curves]
    eps, idx_map = minmax_level(costs)  # common metric level 1 - eps^2
    cands = {"map": _greedy_gain(costs, idx_map, logm)}
    lag = _lagrange(costs, logm)
    if lag is not None:
        cands["lagrange"] = _greedy_gain(costs, lag, logm)
    for name in list(cands):
        cands[name + "+exchange"] = _greedy_gain(costs, _exchange(costs, cands[name], logm), logm)
    scores = {k: network_metric(curves, v) for k, v in cands.items() if costs.feasible(v)}
    best = max(scores, key=lambda k: scores[k])
    return cands[best], {"metric_level": 1.0 - eps**2, "metric": scores[best], "candidate": best,
                         "candidates": scores}
