"""solve/refine.py: the L-BFGS refinement of L + S on the post-activation objective.

References are independent of the module: the whitened truncated SVD (Eckart-Young on
W0 G^{1/2}, torch.linalg.svd) is the optimum of the identity-activation problem with
no sparse part, and torch.autograd differentiates the objective for the gradient check.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_sparse.solve import refine as rf


@pytest.fixture
def problem() -> dict[str, torch.Tensor]:
    """A 48x40 weight with a decaying spectrum and inputs with very unequal channel
    energies (a few outlier channels): an ill-conditioned low-rank fit."""
    g = torch.Generator().manual_seed(3)
    m, n, N = 48, 40, 400
    Qa, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    Qb, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = 10.0 ** torch.linspace(0, -3, n, dtype=torch.float64)
    W0 = (Qa[:, :n] * s) @ Qb.T
    scale = torch.ones(n, dtype=torch.float64)
    scale[:3] = 30.0
    X = torch.randn(n, N, generator=g, dtype=torch.float64) * scale.reshape(-1, 1)
    return {"W0": W0, "X": X}


def whitened_svd_error(W0: torch.Tensor, X: torch.Tensor, r: int) -> float:
    """min over rank-r L of ||(L - W0) X||_F / ||W0 X||_F (Eckart-Young on W0 X)."""
    sv = torch.linalg.svdvals(W0 @ X)
    return float(torch.sqrt((sv[r:] ** 2).sum()) / torch.linalg.vector_norm(sv))


def _start(W0: torch.Tensor, r: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-r factors of the plain truncated SVD of W0 (not data-aware), S = 0."""
    U, s, Vh = torch.linalg.svd(W0, full_matrices=False)
    return U[:, :r] * s[:r], Vh[:r], torch.zeros_like(W0)


@pytest.mark.parametrize("precondition", [True, False], ids=["scaled", "plain"])
def test_identity_refinement_reaches_the_whitened_svd_optimum(problem, precondition: bool) -> None:
    W0, X = problem["W0"], problem["X"]
    r = 6
    U, V, S = _start(W0, r)
    res = rf.refine(W0, U, V, S, X, None, None, "identity", max_iter=2000, patience=50,
                    improve_tol=1e-9, ridge=0.0, precondition=precondition)
    got = rf.post_activation_error(res.U @ res.V + res.S, W0, X, None, "identity")
    best = whitened_svd_error(W0, X, r)
    start = rf.post_activation_error(U @ V, W0, X, None, "identity")
    assert start > 1.5 * best  # the start is far from the optimum
    assert got == pytest.approx(best, rel=1e-3)
    assert torch.count_nonzero(res.S) == 0  # the empty support stays empty


def test_the_scaled_variables_need_fewer_iterations(problem) -> None:
    """Preconditioning each factor by the other's Gram (in the balanced basis) removes
    the spread of the singular values from the curvature."""
    W0, X = problem["W0"], problem["X"]
    r = 6
    U, V, S = _start(W0, r)
    best = whitened_svd_error(W0, X, r)

    def iterations_to_reach(precondition: bool) -> int:
        res = rf.refine(W0, U, V, S, X, None, None, "identity", max_iter=2000, patience=50,
                        improve_tol=1e-9, ridge=0.0, precondition=precondition)
        return next(i for i, e in enumerate(res.fit) if e <= best * 1.01)

    scaled, plain = iterations_to_reach(True), iterations_to_reach(False)
    assert 2 * scaled <= plain, (scaled, plain)


@pytest.mark.parametrize("act", ["gelu", "silu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("precondition", [True, False], ids=["scaled", "plain"])
def test_gradient_matches_autograd(problem, act: str, precondition: bool) -> None:
    W0, X = problem["W0"], problem["X"][:, :64]
    g = torch.Generator().manual_seed(1)
    m, n = W0.shape
    U = torch.randn(m, 5, generator=g, dtype=torch.float64)
    V = torch.randn(5, n, generator=g, dtype=torch.float64)
    S = torch.randn(m, n, generator=g, dtype=torch.float64) * (torch.rand(m, n, generator=g) < 0.2)
    b = torch.randn(m, generator=g, dtype=torch.float64)
    P, d = rf._setup(W0, S, V, X, None, b, act, 0.01, 1, 1e-3)
    if precondition:
        P.cw = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    x = rf._pack(U, V * d, S * d)
    f, _, _, grad, _ = rf._eval(P, x, None)
    xs = [t.clone().requires_grad_(True) for t in (U, V * d, S * d)]
    Uc = xs[0] if P.cw is None else xs[0] * P.cw
    Wh = Uc @ xs[1] + xs[2] * P.mask
    ref = rf.act_fn(Wh @ P.Xf + P.b, act, 0.01) - P.Yf
    loss = (ref ** 2).sum() / P.nyf
    loss.backward()
    assert f == pytest.approx(float(loss.detach()), rel=1e-10)
    for mine, auto in zip(rf._parts(P, grad), xs):
        torch.testing.assert_close(mine, auto.grad, rtol=1e-8, atol=1e-12)


def test_balance_keeps_the_product_and_equalises_singular_values() -> None:
    g = torch.Generator().manual_seed(0)
    U = torch.randn(30, 4, generator=g, dtype=torch.float64) * torch.tensor([100.0, 1, 0.1, 5])
    V = torch.randn(4, 20, generator=g, dtype=torch.float64)
    Ub, Vb = rf.balance(U, V)
    torch.testing.assert_close(Ub @ Vb, U @ V, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.linalg.svdvals(Ub), torch.linalg.svdvals(Vb), rtol=1e-10, atol=1e-12)
    prod = torch.linalg.svdvals(U @ V)[:4]
    torch.testing.assert_close(torch.linalg.svdvals(Ub) ** 2, prod, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("precondition", [True, False], ids=["scaled", "plain"])
def test_fit_error_never_increases_and_rank_and_support_are_kept(problem, precondition: bool) -> None:
    W0, X = problem["W0"], problem["X"]
    g = torch.Generator().manual_seed(5)
    U, V, _ = _start(W0, 4)
    S = W0 * (torch.rand(W0.shape, generator=g, dtype=torch.float64) < 0.1)
    res = rf.refine(W0, U, V, S, X[:, :300], X[:, 300:], torch.zeros(W0.shape[0], dtype=W0.dtype),
                    "gelu", max_iter=60, precondition=precondition)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(res.fit, res.fit[1:]))
    assert res.U.shape[1] == 4 and torch.linalg.matrix_rank(res.U @ res.V) <= 4
    assert torch.equal(res.S != 0, (S != 0) & (res.S != 0)) and not torch.any((res.S != 0) & (S == 0))
    assert res.held[res.best] == min(res.held)
    assert math.isfinite(res.held[res.best]) and res.held[res.best] <= res.held[0]
