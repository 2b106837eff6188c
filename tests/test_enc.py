"""ENC allocation: budgets met, network metric >= uniform's at the same budget."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_sparse.budget import Budget, LayerSpec, allocate
from test_alds import _total, random_layers, realistic_layers


def _metric(alloc) -> float:
    """Product over layers of kept energy 1 - e^2 (independent of the code's own metric)."""
    return math.prod(1.0 - la.predicted_error**2 for la in alloc.layers)


@pytest.mark.parametrize("mode", ["rank_only", "sparse_only", "lowrank_sparse"])
@pytest.mark.parametrize("which", ["random", "realistic"])
@pytest.mark.parametrize("target", [{"params": 0.3}, {"macs": 0.4}], ids=["params", "macs"])
def test_enc_meets_budget_and_beats_uniform(mode, which, target, tgen):
    if which == "realistic" and mode == "lowrank_sparse" and "macs" in target:
        pytest.skip("covered by the params case; keeps the file fast")
    layers = random_layers(tgen) if which == "random" else realistic_layers(tgen)
    tp, tf = _total(layers)
    b = Budget(**target)
    e = allocate(layers, b, "enc", total_params=tp, total_macs=tf, mode=mode)
    u = allocate(layers, b, "uniform", total_params=tp, total_macs=tf, mode=mode)
    key, tot = ("params", tp) if "params" in target else ("macs", tf)
    used = getattr(e, key)
    assert 0.99 * target[key] * tot <= used <= target[key] * tot
    assert _metric(e) >= _metric(u) - 1e-12
    assert e.info["metric"] == pytest.approx(_metric(e), rel=1e-9)


def test_enc_map_level_is_common(tgen):
    layers = realistic_layers(tgen)
    a = allocate(layers, Budget(params=0.3), "enc", mode="rank_only", keep_first_last=False)
    lvl = a.info["metric_level"]
    # every layer keeps at least the common energy level found by ENC-Map... or more
    assert 0.0 < lvl < 1.0
    assert set(a.info["candidates"]) >= {"map", "map+exchange"}
    assert a.info["metric"] == max(a.info["candidates"].values())


def test_enc_beats_uniform_strictly_on_heterogeneous_spectra(tgen):
    # one layer with a fast-decaying spectrum and one with a flat spectrum
    fast = LayerSpec("fast", (torch.randn(64, 4, generator=tgen) @ torch.randn(4, 96, generator=tgen))
                     + 0.01 * torch.randn(64, 96, generator=tgen))
    flat = LayerSpec("flat", torch.randn(64, 96, generator=tgen))
    e = allocate([fast, flat], Budget(params=0.4), "enc", mode="rank_only", keep_first_last=False)
    u = allocate([fast, flat], Budget(params=0.4), "uniform", mode="rank_only", keep_first_last=False)
    assert _metric(e) > _metric(u) * 1.05
    assert e["fast"].rank < e["flat"].rank
