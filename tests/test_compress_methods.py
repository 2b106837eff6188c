"""Tests for lowrank_sparse.compress.methods: the registry (method name -> config class +
per-layer handler) and the three built-in handlers, checked against direct calls of
decompose / the baselines."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from lowrank_sparse import decompose
from lowrank_sparse.compress import (
    LowRankSparseConfig,
    RankOnlyConfig,
    SparseOnlyConfig,
    compress,
    get_method,
    method_names,
    method_of_config,
    register_method,
    solve_layer,
)
from lowrank_sparse.compress import methods as M
from lowrank_sparse import baselines
from lowrank_sparse.solve.config import SolverConfig
from lowrank_sparse.structure import parse_structure


@pytest.fixture
def problem(tgen):
    W = torch.randn(6, 10, generator=tgen)
    X = torch.randn(10, 40, generator=tgen)
    b = torch.randn(6, generator=tgen)
    return M.LayerProblem(W, b, 2, 0.1, 1, parse_structure("unstructured"), X, None, "relu")


def test_unknown_method_is_rejected_naming_the_known_ones(tgen):
    with pytest.raises(ValueError, match=r"unknown method 'svd'; known methods: lowrank_sparse, rank_only, sparse_only"):
        get_method("svd")
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"unknown method 'svd'.*rank_only"):
        compress(model, torch.randn(8, 4, generator=tgen), rank=1, method="svd")


def test_configs_map_to_their_methods():
    assert method_names()[:3] == ("lowrank_sparse", "rank_only", "sparse_only")
    for cfg, name in ((LowRankSparseConfig(), "lowrank_sparse"), (RankOnlyConfig(), "rank_only"),
                      (SparseOnlyConfig(), "sparse_only")):
        assert method_of_config(cfg).name == name and get_method(name).config_cls is type(cfg)
    assert get_method("rank_only").has_rank and not get_method("rank_only").has_density
    with pytest.raises(TypeError, match="method config"):
        method_of_config(SolverConfig())


@pytest.mark.parametrize("which", ["lowrank_sparse", "rank_only", "sparse_only"])
def test_handlers_equal_direct_solver_calls(which, problem):
    p = problem
    solver = SolverConfig(max_iter=25, seed=3)
    common = dict(X=p.X, gram=None, bias=p.bias, activation="relu")
    if which == "lowrank_sparse":
        got = solve_layer(LowRankSparseConfig(solver=solver), p)
        ref = decompose(p.weight, 2, 0.1, "unstructured", max_iter=25, seed=3, **common)
    elif which == "rank_only":
        got = solve_layer(RankOnlyConfig(solver=solver), p)
        ref = baselines.rank_only(p.weight, 2, max_iter=25, seed=3, **common)
    else:
        got = solve_layer(SparseOnlyConfig(solver=replace(solver, refit=False)), p)
        ref = baselines.sparse_only(p.weight, 0.1, "unstructured", refit=False, seed=3, **common)
    for a, b in ((got.U, ref.U), (got.V, ref.V), (got.S, ref.S)):
        assert torch.equal(a, b)


def test_a_registered_method_is_used_by_compress(tgen, monkeypatch):
    """A new method: its own config class and handler (here: keep the weight dense as S)."""
    from dataclasses import dataclass, field
    from typing import ClassVar

    from lowrank_sparse.solve.result import Decomposition, SolveInfo

    @dataclass(frozen=True)
    class KeepConfig:
        method: ClassVar[str] = "keep"
        density: float | None = None
        solver: SolverConfig = field(default_factory=SolverConfig)

    calls = []

    def handler(p, config):
        calls.append(tuple(p.weight.shape))
        m, n = p.weight.shape
        return Decomposition(U=torch.zeros(m, 0), V=torch.zeros(0, n), S=p.weight.clone(),
                             structure=p.structure, info=SolveInfo(converged=True), slices=1)

    monkeypatch.setattr(M, "_REGISTRY", dict(M._REGISTRY))
    register_method("keep", KeepConfig, handler, allocation_mode="sparse_only")
    assert "keep" in method_names()
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(20, 5, generator=tgen)
    new, rep = compress(model, x, config=KeepConfig(density=0.5), keep_first_last=False, progress=False)
    assert calls == [(6, 5), (3, 6)] and rep.method == "keep"
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x))
    assert rep.layer("0").output_error_after < 1e-6
