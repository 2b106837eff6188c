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


@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@pytest.mark.parametrize("case", ["weight", "weight-no-sparse", "gram"], ids=["weight", "weight-no-sparse", "gram"])
def test_native_matches_torch_at_split_gemm_sizes(case: str, threads: int) -> None:
    """Shapes large enough that the core splits its GEMMs over threads and runs the
    elementwise passes in several dynamically claimed chunks; float64 so that the
    comparison with the torch twin is tight."""
    g = torch.Generator().manual_seed(11)
    m, n = 260, 640
    W = torch.randn(m, n, generator=g, dtype=torch.float64) * torch.linspace(2, 0.3, n, dtype=torch.float64)
    kw: dict = {}
    density = 0.05
    if case == "gram":
        X = torch.randn(n, 700, generator=g, dtype=torch.float64)
        kw["X"] = X
    if case == "weight-no-sparse":
        density = 0.0
    pr = prepare(W, 20, density, max_iter=8, tol=1e-12, **kw)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    a = solve_torch(pr.W, pr.spec, V0, gram=pr.gram, X=pr.X, bias=pr.bias)
    c = solve_native(pr.W, pr.spec, V0, gram=pr.gram, X=pr.X, bias=pr.bias, threads=threads)
    assert a.iterations == c.iterations == 8
    Ma, Mc = a.U @ a.V + a.S, c.U @ c.V + c.S
    assert float((Ma - Mc).norm() / Ma.norm()) < 1e-9
    np.testing.assert_allclose(c.primal, a.primal, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(c.dual, a.dual, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(c.objective, a.objective, rtol=1e-9)
    # S keeps exactly k entries (or none)
    assert int((c.S != 0).sum()) == (pr.spec.k if density > 0 else 0)


def test_native_reports_phase_timings() -> None:
    W, _, _ = _problem(torch.float32)
    pr = prepare(W, 3, 0.1, max_iter=5, tol=1e-12)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    c = solve_native(pr.W, pr.spec, V0)
    t = c.extra["timing"]
    assert set(t) == {"svd_products", "svd_qr", "svd_small", "svd", "lform", "project",
                      "elementwise", "wstep", "total"}
    assert all(v >= 0 for v in t.values())
    parts = t["svd"] + t["lform"] + t["project"] + t["elementwise"] + t["wstep"]
    assert parts <= t["total"] * 1.001 + 1e-6
    assert t["svd_products"] + t["svd_qr"] + t["svd_small"] <= t["svd"] * 1.001 + 1e-6


def test_native_rejects_bad_gemm_threads() -> None:
    from lowrank_sparse import _core

    W = np.ones((4, 6))
    args = dict(mode=0, gram=None, X=None, bias=None, activation=0, negative_slope=0.01, rank=0,
                slices=1, p=0, kind=0, block=1, nm_n=2, nm_m=4, k=3, sparse=True, relaxed=False,
                lam_nuclear=0.0, lam_sparse=0.0, max_iter=5, tol=1e-4, rho0=1.0, mu=10.0,
                tau=2.0, rho_growth=1.0, power_iters=1, newton_steps=4, V0=None)
    with pytest.raises(ValueError, match="iteration settings"):
        _core.admm_solve_f64(W, **{**args, "gemm_threads": 0})
