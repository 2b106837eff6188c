"""Uniform allocation: equal ratios up to rounding, budgets met."""

from __future__ import annotations

import pytest

from lowrank_sparse.budget import Budget, allocate
from test_alds import _total, random_layers, realistic_layers


@pytest.mark.parametrize("mode", ["rank_only", "sparse_only", "lowrank_sparse"])
@pytest.mark.parametrize("which", ["random", "realistic"])
def test_ratios_equal_up_to_rounding(mode, which, tgen):
    layers = random_layers(tgen) if which == "random" else realistic_layers(tgen)
    tp, tf = _total(layers)
    target = 0.35
    a = allocate(layers, Budget(params=target), "uniform", total_params=tp, total_macs=tf, mode=mode)
    assert 0.99 * target * tp <= a.params <= target * tp
    ratios, steps = [], []
    for l, la in zip(layers, a.layers):
        if la.source != "allocated" or la.keep_dense:
            continue
        ratios.append(la.params / (l.m * l.n))
        # one rounding step of this layer: a rank step (m+n) or, for sparse only, a grid step
        steps.append(max(l.m + l.n, 0.005 * l.m * l.n) / (l.m * l.n))
    assert len(ratios) >= 3
    spread = max(ratios) - min(ratios)
    # lowrank_sparse frontiers mix splits, so their points are up to ~1.5 rank steps apart
    assert spread <= (3 if mode == "lowrank_sparse" else 2) * max(steps) + 1e-12


def test_uniform_slices_are_one(tgen):
    layers = realistic_layers(tgen)
    a = allocate(layers, Budget(params=0.3), "uniform", mode="rank_only")
    assert all(la.slices == 1 for la in a.layers)


def test_uniform_macs_target(tgen):
    layers = realistic_layers(tgen)
    tp, tf = _total(layers)
    a = allocate(layers, Budget(macs=0.45), "uniform", total_params=tp, total_macs=tf, mode="rank_only")
    assert 0.99 * 0.45 * tf <= a.macs <= 0.45 * tf
