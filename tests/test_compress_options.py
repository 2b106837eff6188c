"""Tests for lowrank_sparse.compress.options: config objects and keyword shortcuts give
the same compress() run; conflicts and unknown options are rejected."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lowrank_sparse as lrs
from lowrank_sparse.compress import compress


@pytest.fixture
def mlp_data(tgen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 20), nn.GELU(), nn.Linear(20, 4)).eval()
    return model, torch.randn(120, 12, generator=tgen)


def _same_models(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "keywords,config",
    [
        (dict(rank=3, density=0.05, structure="row"),
         lrs.LowRankSparseConfig(rank=3, density=0.05, structure="row", solver=lrs.SolverConfig(max_iter=20, seed=2))),
        (dict(rank=0.25, method="rank_only"), lrs.RankOnlyConfig(rank=0.25, solver=lrs.SolverConfig(max_iter=20, seed=2))),
        (dict(density=0.2, method="sparse_only", solver_options={"refit": False}),
         lrs.SparseOnlyConfig(density=0.2, solver=lrs.SolverConfig(max_iter=20, seed=2, refit=False))),
    ],
    ids=["lowrank_sparse", "rank_only", "sparse_only-no-refit"],
)
def test_config_objects_equal_keyword_shortcuts(keywords, config, mlp_data):
    model, x = mlp_data
    a, rep_a = compress(model, x, max_iter=20, seed=2, sample_size=64, batch_size=50, keep_first_last=False,
                        progress=False, **keywords)
    cal = lrs.CalibrationConfig(sample_size=64, batch_size=50, seed=2)
    b, rep_b = compress(model, x, config=config, calibration=cal, keep_first_last=False, progress=False)
    assert _same_models(a, b)
    assert rep_a.method == rep_b.method and rep_a.calibration == rep_b.calibration
    assert [r.output_error_after for r in rep_a.layers] == [r.output_error_after for r in rep_b.layers]


def test_keywords_override_the_config(mlp_data):
    model, x = mlp_data
    cfg = lrs.LowRankSparseConfig(rank=2, density=0.05, solver=lrs.SolverConfig(max_iter=20))
    _, rep = compress(model, x, config=cfg, rank=5, sample_size=32, keep_first_last=False, progress=False)
    assert [r.rank for r in rep.layers] == [5, 5, 4]  # the last layer's full rank is 4
    assert rep.calibration["sample_size"] == 32


def test_conflicts_and_unknown_options(mlp_data):
    model, x = mlp_data
    with pytest.raises(ValueError, match="contradicts config=RankOnlyConfig"):
        compress(model, x, config=lrs.RankOnlyConfig(rank=2), method="sparse_only")
    with pytest.raises(ValueError, match="rank_only' has no sparse part"):
        compress(model, x, config=lrs.RankOnlyConfig(rank=2), density=0.1)
    with pytest.raises(ValueError, match="sparse_only' has no low-rank part"):
        compress(model, x, method="sparse_only", rank=3, density=0.1)
    with pytest.raises(ValueError, match="not both"):
        compress(model, x, lrs.Budget(params=0.5), config=lrs.LowRankSparseConfig(rank=2))
    with pytest.raises(ValueError, match="give a target Budget or an explicit rank"):
        compress(model, x, config=lrs.RankOnlyConfig())
    with pytest.raises(TypeError, match=r"unknown solver option\(s\) \['bogus'\]"):
        compress(model, x, rank=2, solver_options={"bogus": 1})
    with pytest.raises(TypeError, match="method config"):
        compress(model, x, config=lrs.SolverConfig())
    with pytest.raises(TypeError, match="CalibrationConfig"):
        compress(model, x, rank=2, calibration=lrs.SolverConfig())
