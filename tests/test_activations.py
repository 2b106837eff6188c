"""Activations, derivatives and the elementwise Z-step (torch and C++) against
torch.nn.functional, autograd and a brute-force grid minimisation in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

from lowrank_sparse.solve.activations import act_derivs, act_fn, act_residual, zstep

SMOOTH = ["gelu", "silu", "tanh"]
ALL = ["identity", "relu", "leaky_relu", "gelu", "silu", "tanh"]

_REF = {
    "identity": lambda u: u,
    "relu": Fn.relu,
    "leaky_relu": lambda u: Fn.leaky_relu(u, 0.1),
    "gelu": lambda u: 0.5 * u * (1.0 + torch.erf(u / 2.0 ** 0.5)),  # the definitions, not torch's kernels
    "silu": lambda u: u / (1.0 + torch.exp(-u)),
    "tanh": torch.tanh,
}


@pytest.mark.parametrize("name", ALL)
def test_act_fn_matches_torch(name: str) -> None:
    u = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(act_fn(u, name, 0.1), _REF[name](u), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SMOOTH)
def test_derivatives_match_autograd(name: str) -> None:
    u = torch.linspace(-5, 5, 401, dtype=torch.float64, requires_grad=True)
    f = _REF[name](u)
    (d1,) = torch.autograd.grad(f.sum(), u, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), u)
    a, b, c = act_derivs(u.detach(), name)
    torch.testing.assert_close(a, f.detach())
    torch.testing.assert_close(b, d1.detach())
    torch.testing.assert_close(c, d2)


@pytest.mark.parametrize("name", ALL)
def test_act_residual_is_the_residual_times_the_autograd_slope(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(7, 300, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.randn(7, 300, generator=g, dtype=torch.float64)
    a = _REF[name](z)
    (slope,) = torch.autograd.grad(a.sum(), z)
    z0 = z.detach().clone()
    r, rd = act_residual(z.detach(), y, name, 0.1)
    torch.testing.assert_close(r, a.detach() - y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rd, (a.detach() - y) * slope, rtol=1e-12, atol=1e-12)
    assert torch.equal(z.detach(), z0)  # z is not modified


def _np_act(name: str, u: np.ndarray, slope: float) -> np.ndarray:
    return _REF[name](torch.from_numpy(u)).numpy() if name != "leaky_relu" else np.where(u >= 0, u, slope * u)


def _grid_argmin(name: str, y: np.ndarray, c: np.ndarray, rho: float, slope: float) -> np.ndarray:
    """Brute force: objective on a fine grid around the candidates, per element."""
    grid = np.linspace(-8, 8, 160001)
    act = _np_act(name, grid, slope)
    out = np.empty_like(y)
    for i in range(y.size):
        f = 0.5 * (y[i] - act) ** 2 + 0.5 * rho * (grid - c[i]) ** 2
        out[i] = grid[np.argmin(f)]
    return out


def _obj(name: str, u: np.ndarray, y: np.ndarray, c: np.ndarray, rho: float, slope: float) -> np.ndarray:
    return 0.5 * (y - _np_act(name, u, slope)) ** 2 + 0.5 * rho * (u - c) ** 2


@pytest.mark.parametrize("rho", [0.3, 3.0], ids=["rho0.3", "rho3"])
@pytest.mark.parametrize("name", ALL)
def test_zstep_is_the_minimiser(name: str, rho: float, rng: np.random.Generator) -> None:
    slope = 0.1
    y = _np_act(name, rng.normal(size=40) * 2, slope) + 0.3 * rng.normal(size=40)
    c = rng.normal(size=40) * 2
    ref = _grid_argmin(name, y, c, rho, slope)
    u = zstep(torch.from_numpy(y), torch.from_numpy(c), torch.from_numpy(c.copy()), rho, name, slope, 8).numpy()
    f_u, f_ref = _obj(name, u, y, c, rho, slope), _obj(name, ref, y, c, rho, slope)
    # closed forms are exact; a few Newton steps are near-exact (and land in the
    # global basin: a wrong basin costs O(1) in these problems)
    tol = 1e-7 if name in ("identity", "relu", "leaky_relu") else 2e-4
    assert np.all(f_u <= f_ref + tol * (1 + f_ref)), np.max(f_u - f_ref)


@pytest.mark.parametrize("name", ALL)
def test_zstep_native_matches_torch(name: str, rng: np.random.Generator) -> None:
    from lowrank_sparse import _core

    y = rng.normal(size=500)
    c = rng.normal(size=500) * 2
    u0 = rng.normal(size=500)
    t = zstep(torch.from_numpy(y), torch.from_numpy(c), torch.from_numpy(u0), 1.7, name, 0.05, 4).numpy()
    n = _core.zstep(y, c, u0, 1.7, getattr(_core.Activation, name), 0.05, 4)
    # exact formulas agree to rounding; Newton paths may differ in a last borderline
    # backtracking test (fc <= f0 up to rounding), hence 1e-6 for the smooth ones
    atol = 1e-12 if name in ("identity", "relu", "leaky_relu") else 1e-6
    np.testing.assert_allclose(n, t, rtol=0, atol=atol)


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_zstep_never_increases_objective(name: str, rng: np.random.Generator) -> None:
    y = rng.normal(size=1000) * 3
    c = rng.normal(size=1000) * 3
    u0 = rng.normal(size=1000) * 5
    u = zstep(torch.from_numpy(y), torch.from_numpy(c), torch.from_numpy(u0), 0.05, name, 0.0, 2).numpy()
    assert np.all(_obj(name, u, y, c, 0.05, 0.0) <= _obj(name, u0, y, c, 0.05, 0.0) + 1e-12)
