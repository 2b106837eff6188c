"""SolverConfig (lowrank_sparse/solve/config.py): one settings object for decompose and
the baselines; keyword shortcuts override its fields; a given config is the same call
as the same keywords."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowrank_sparse as lrs
from lowrank_sparse.baselines import rank_only, sparse_only


@pytest.fixture
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    W = torch.randn(24, 16, generator=g, dtype=torch.float64)
    X = torch.randn(16, 64, generator=g, dtype=torch.float64)
    return W, X


def _same(a, b) -> None:
    for x, y in ((a.U, b.U), (a.V, b.V), (a.S, b.S)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("activation", [None, "relu"], ids=["gram", "relu"])
def test_config_is_the_same_call_as_its_keywords(problem, backend, activation) -> None:
    W, X = problem
    # refine=False: the ADMM path for relu too (its iteration count is checked)
    kw = dict(backend=backend, max_iter=7, tol=1e-9, seed=3, subsample=40, refine=False)
    a = lrs.decompose(W, 3, 0.1, X=X, activation=activation, **kw)
    b = lrs.decompose(W, 3, 0.1, X=X, activation=activation, config=lrs.SolverConfig(**kw))
    _same(a, b)
    assert a.info.iterations == b.info.iterations == 7
    assert a.info.path == b.info.path == "admm"


def test_refine_field_is_the_same_call_as_its_keyword(problem) -> None:
    W, X = problem
    a = lrs.decompose(W, 3, 0.1, X=X, activation="gelu", refine=False)
    b = lrs.decompose(W, 3, 0.1, X=X, activation="gelu", config=lrs.SolverConfig(refine=False))
    c = lrs.decompose(W, 3, 0.1, X=X, activation="gelu", config=lrs.SolverConfig(refine=False), refine=True)
    _same(a, b)
    assert a.info.path == "admm" and c.info.path == "refine"
    assert lrs.decompose(W, 3, 0.1, X=X, activation="gelu").info.path == "refine"
    with pytest.raises(TypeError, match="refine"):
        lrs.decompose(W, 3, 0.1, X=X, activation="gelu", refine="yes")


def test_keyword_overrides_the_config_field(problem) -> None:
    W, _ = problem
    d = lrs.decompose(W, 3, 0.1, config=lrs.SolverConfig(max_iter=50, tol=1e-12), max_iter=4)
    assert d.info.iterations == 4


def test_default_config_equals_no_config(problem) -> None:
    W, X = problem
    _same(lrs.decompose(W, 3, 0.1, X=X), lrs.decompose(W, 3, 0.1, X=X, config=lrs.SolverConfig()))


@pytest.mark.parametrize("bad", [{"max_iter": 5}, "fast", 3], ids=["dict", "str", "int"])
def test_config_of_wrong_type_is_named(problem, bad) -> None:
    W, _ = problem
    with pytest.raises(TypeError, match="config must be a lowrank_sparse.SolverConfig"):
        lrs.decompose(W, 3, 0.1, config=bad)


def test_baselines_take_the_config(problem) -> None:
    W, X = problem
    cfg = lrs.SolverConfig(seed=5, subsample=32, max_iter=6, tol=1e-12)
    a = rank_only(W, 3, X=X, activation="relu", config=cfg)
    b = rank_only(W, 3, X=X, activation="relu", seed=5, subsample=32, max_iter=6, tol=1e-12)
    _same(a, b)
    assert a.info.iterations <= 6 and a.info.path in ("admm", "refine")
    a = sparse_only(W, 0.2, X=X, activation="relu", config=cfg)
    b = sparse_only(W, 0.2, X=X, activation="relu", seed=5, subsample=32)
    _same(a, b)
    with pytest.raises(TypeError, match="config must be"):
        sparse_only(W, 0.2, config=np.zeros(2))
