"""Size against latency (budget/tradeoff.py): the allocator with a latency budget searches
frontiers that trade stored values for predicted seconds, so that fast rank-only splits
are not hidden behind each size's most accurate (S-heavy, slow) split.

Latency tables are made-up functions, so no assertion depends on this machine's speed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowrank_sparse.budget import Budget, LatencyModel, LayerSpec, LayerTimes, allocate
from lowrank_sparse.budget.tradeoff import WEIGHTS

M, N = 64, 48


@pytest.fixture
def layers() -> list[LayerSpec]:
    g = torch.Generator().manual_seed(3)
    decay = torch.diag(torch.linspace(1.0, 0.02, N, dtype=torch.float64))
    out = []
    for i in range(4):
        w = torch.randn(M, N, generator=g, dtype=torch.float64) @ decay
        w[:, : 2 + i] *= 6.0  # a few outlier input channels: S pays at some sizes
        out.append(LayerSpec(f"l{i}", w.float()))
    return out


def _slow_sparse(s_per_value: float):
    """Pair seconds where a sparse value costs ``s_per_value`` times a low-rank value
    (dense product = 1.0, as on a CPU where small sparse products are slow)."""
    def fn(rank: int, density: float, slices: int) -> float:
        return 0.02 + (rank * (M + N) + s_per_value * density * M * N) / (M * N)
    return fn


def _table(layers: list[LayerSpec], s_per_value: float) -> LatencyModel:
    return LatencyModel({l.name: LayerTimes.from_function(1.0, _slow_sparse(s_per_value)) for l in layers},
                        rest_seconds=0.1)


def _seconds(alloc, lm: LatencyModel) -> float:
    """Independent sum of the predicted seconds: rest + each layer's cheaper form."""
    tot = lm.rest_seconds
    for la in alloc.layers:
        t = lm[la.name]
        tot += t.dense if la.keep_dense else min(t.dense, t.pair_seconds(la.rank, la.density, la.slices))
    return tot


def _score(method: str, alloc) -> float:
    """The method's objective from the reported per-layer errors (lower is better)."""
    errs = [la.predicted_error for la in alloc.layers]
    if method == "enc":
        return -math.prod(1.0 - e * e for e in errs)
    return max(errs)


def test_params_and_latency_where_s_is_slow_mix_fast_and_accurate_splits(layers) -> None:
    # every S value costs as much as 8 dense values: each size's most accurate split (with S)
    # is slower than rank only at that size; with both budgets binding the best allocation
    # mixes them, and beats both parts
    lm = _table(layers, 8.0)
    tgt = Budget(params=0.25, latency=0.4)
    a = allocate(layers, tgt, "alds", latency=lm, keep_first_last=False)
    assert a.params <= 0.25 * a.total_params
    assert _seconds(a, lm) <= 0.4 * a.dense_seconds * (1 + 1e-12)
    assert a.seconds == pytest.approx(_seconds(a, lm), rel=1e-12)
    parts = [allocate(layers, tgt, "alds", latency=lm, keep_first_last=False, mode=m) for m in ("rank_only", "sparse_only")]
    assert _score("alds", a) < min(_score("alds", p) for p in parts) - 1e-3
    assert any(x.nnz > 0 and x.rank > 0 for x in a.layers)
    tr = a.info["tradeoff"]
    assert tr["weight"] > 0.0 and len(tr["tried"]) == 3 * len(WEIGHTS)
    assert tr["objective"] == pytest.approx(_score("alds", a), rel=1e-9)


@pytest.mark.parametrize("method", ["alds", "enc"])
@pytest.mark.parametrize("target", [
    {"params": 0.3, "latency": 0.6}, {"params": 0.2, "latency": 0.9}, {"latency": 0.5}, {"macs": 0.3, "latency": 0.7},
], ids=["p0.3-l0.6", "p0.2-l0.9", "l0.5", "m0.3-l0.7"])
@pytest.mark.parametrize("s_cost", [0.8, 4.0], ids=["s-cheap", "s-slow"])
def test_lowrank_sparse_never_loses_to_its_parts_under_a_latency_budget(layers, method, target, s_cost) -> None:
    lm = _table(layers, s_cost)
    tgt = Budget(**target)
    got = {}
    for mode in ("lowrank_sparse", "rank_only", "sparse_only"):
        try:
            a = allocate(layers, tgt, method, latency=lm, keep_first_last=False, mode=mode)
        except ValueError:
            continue
        assert _seconds(a, lm) <= tgt.latency * a.dense_seconds * (1 + 1e-12)
        if tgt.params is not None:
            assert a.params <= tgt.params * a.total_params
        if tgt.macs is not None:
            assert a.macs <= tgt.macs * a.total_macs
        got[mode] = _score(method, a)
    assert "lowrank_sparse" in got  # feasible whenever a part is: its candidates include both parts'
    for mode in ("rank_only", "sparse_only"):
        if mode in got:
            assert got["lowrank_sparse"] <= got[mode] + 1e-9, got


def test_the_latency_budget_is_spent_when_it_binds(layers) -> None:
    # loose params, tight latency: the allocation leaves less than one rank step of seconds
    lm = _table(layers, 4.0)
    a = allocate(layers, Budget(params=0.9, latency=0.5), "alds", latency=lm, keep_first_last=False)
    slack = 0.5 * a.dense_seconds - _seconds(a, lm)
    step = (M + N) / (M * N)  # one more rank of one layer
    assert -1e-12 <= slack <= 2 * step, (slack, [(x.rank, x.density) for x in a.layers])


def test_targets_met_alone_but_not_together_say_so(layers) -> None:
    # a made-up machine where bigger configurations run faster: the smallest meets the params
    # target, the largest the latency target, nothing both
    fn = lambda r, d, s: 1.0 - 0.9 * (r * (M + N) + d * M * N) / (M * N)  # noqa: E731
    lm = LatencyModel({l.name: LayerTimes.from_function(1.0, fn) for l in layers}, rest_seconds=0.0)
    allocate(layers, Budget(params=0.05), "alds", keep_first_last=False)
    allocate(layers, Budget(latency=0.3), "alds", latency=lm, keep_first_last=False)
    with pytest.raises(ValueError, match="infeasible targets together.*loosen one of them"):
        allocate(layers, Budget(params=0.05, latency=0.3), "alds", latency=lm, keep_first_last=False)


def test_without_a_latency_budget_the_size_frontier_is_unchanged(layers) -> None:
    lm = _table(layers, 4.0)
    a = allocate(layers, Budget(params=0.3), "alds", keep_first_last=False)
    b = allocate(layers, Budget(params=0.3), "alds", latency=lm, keep_first_last=False)  # reports seconds only
    assert [(x.rank, x.nnz) for x in a.layers] == [(x.rank, x.nnz) for x in b.layers]
    assert "tradeoff" not in b.info and b.seconds == pytest.approx(_seconds(b, lm))
    assert np.isfinite(b.latency_ratio)


def test_split_refinement_keeps_the_allocated_entry_when_other_splits_are_slower(layers) -> None:
    # the allocated entry (rank 6 + S) sits exactly at its latency cap; the share-grid splits of
    # the same size are slower, rank only at that size is fast but far less accurate: the
    # refinement must not trade the allocated entry for the only other split that fits
    from lowrank_sparse.budget.allocator import _best_split
    from lowrank_sparse.budget.spectra import CurveCache
    from lowrank_sparse.structure import parse_structure
    l, st = layers[0], parse_structure("unstructured")
    own = (6, 0.05)
    size = own[0] * (M + N) + int(round(own[1] * M * N))
    secs = lambda r, d, s: 0.3 if d == 0.0 else (0.5 if (r, d) == own else 0.6)  # noqa: E731
    times = LayerTimes.from_function(1.0, secs)
    asked = []

    def error_fn(layer, r, d):
        asked.append((r, d))
        return 0.1 if (r, d) == own else 0.01

    r, d, err = _best_split(l, size, st, (0.0, 0.1, 0.25, 0.5), error_fn, CurveCache(), (times, 0.5), own)
    assert (r, d, err) == (own[0], own[1], 0.1)
    assert asked == [own]  # every other split with an S was over the cap, so never solved
    # rank only at this size (the one other split within the cap) is worse by the exact spectrum
    s = torch.linalg.svdvals(l.weight.double())
    assert float((s[size // (M + N):] ** 2).sum().sqrt() / s.norm()) > 0.1


def test_the_table_names_the_trade_off_that_won(layers) -> None:
    lm = _table(layers, 8.0)
    a = allocate(layers, Budget(params=0.25, latency=0.4), "alds", latency=lm, keep_first_last=False)
    tr = a.info["tradeoff"]
    ok = sum(t["objective"] is not None for t in tr["tried"])
    line = a.table().splitlines()[-1]
    assert line == (f"size/latency trade-off: candidates {tr['subset']}, weight of the seconds {tr['weight']:g} "
                    f"(best of {ok} feasible among {3 * len(WEIGHTS)} searched)")
    assert "trade-off" not in allocate(layers, Budget(params=0.25), "alds", keep_first_last=False).table()
