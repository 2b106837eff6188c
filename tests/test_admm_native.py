"""The C++ ADMM (lowrank_sparse.solve.native) runs the same iterations as the torch
reference: same iteration count, same histories, same result to float tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_sparse._validate import initial_subspace, prepare
from lowrank_sparse.solve.native import solve_native
from lowrank_sparse.solve.torch_backend import solve_torch

CASES = {
    "weight-unstructured": dict(),
    "weight-channel": dict(structure="channel", block=3),
    "weight-2:4": dict(structure="2:4"),
    "weight-slices": dict(slices=3),
    "weight-relaxed-row": dict(relaxed=True, structure="row", lam_nuclear=2.0, lam_sparse=1.0),
    "gram": dict(data=True),
    "relu": dict(data=True, activation="relu"),
    "leaky_relu": dict(data=True, activation="leaky_relu"),
    "gelu": dict(data=True, activation="gelu"),
}


def _problem(dtype: torch.dtype, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(18, 24, generator=g, dtype=torch.float64) * torch.linspace(2, 0.2, 24, dtype=torch.float64)
    X = torch.randn(24, 150, generator=g, dtype=torch.float64) * torch.linspace(2, 0.1, 24, dtype=torch.float64)[:, None]
    b = 0.1 * torch.randn(18, generator=g, dtype=torch.float64)
    return W.to(dtype), X.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_native_matches_torch(case: str, dtype: torch.dtype) -> None:
    kw = dict(CASES[case])
    W, X, b = _problem(dtype)
    if kw.pop("data", False):
        kw["X"] = X
        if kw.get("activation"):
            kw["bias"] = b
    iters = 12
    pr = prepare(W, 3, 0.1, max_iter=iters, tol=1e-12, **kw)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    a = solve_torch(pr.W, pr.spec, V0, gram=pr.gram, X=pr.X, bias=pr.bias)
    c = solve_native(pr.W, pr.spec, V0, gram=pr.gram, X=pr.X, bias=pr.bias)
    assert a.iterations == c.iterations
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    Ma, Mc = a.U @ a.V + a.S, c.U @ c.V + c.S
    assert float((Ma - Mc).norm() / Ma.norm()) < tol
    np.testing.assert_allclose(c.objective, a.objective, rtol=tol * 10, atol=tol)
    np.testing.assert_allclose(c.primal, a.primal, rtol=tol * 100, atol=tol)
    assert a.U.shape == c.U.shape and c.S.dtype == dtype


def test_native_errors_are_python_exceptions() -> None:
    from lowrank_sparse import _core

    W = np.ones((4, 6))
    args = dict(mode=0, gram=None, X=None, bias=None, activation=0, negative_slope=0.01, rank=0,
                slices=1, p=0, kind=0, block=1, nm_n=2, nm_m=4, k=3, sparse=True, relaxed=False,
                lam_nuclear=0.0, lam_sparse=0.0, max_iter=5, tol=1e-4, rho0=1.0, mu=10.0,
                tau=2.0, rho_growth=1.0, power_iters=1, newton_steps=4, V0=None)
    _core.admm_solve_f64(W, **args)  # valid
    with pytest.raises(TypeError):
        _core.admm_solve_f64(W.astype(np.float32), **args)
    bad = np.array(W)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _core.admm_solve_f64(bad, **args)
    with pytest.raises(ValueError, match="V0"):
        _core.admm_solve_f64(W, **{**args, "rank": 2, "p": 3})
    with pytest.raises(ValueError, match="mode gram"):
        _core.admm_solve_f64(W, **{**args, "mode": 1})
