"""The peers given the Gram matrix gram = X X^T (n, n) instead of X (n, N): the same
factors as from X, checked against plain numpy formulas of the Gram form."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_sparse.peers import oats, sparsegpt, wanda, whitened_svd


def _problem(m: int = 12, n: int = 16, N: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, n))
    X = (np.eye(n) + 0.3 * rng.normal(size=(n, n))) @ rng.normal(size=(n, N)) * rng.uniform(0.2, 3, (n, 1))
    return W, X


def test_wanda_from_gram_scores_by_sqrt_diag() -> None:
    W, X = _problem()
    G = X @ X.T
    d = wanda(W, 0.3, gram=G)
    k = int(0.3 * 16 + 0.5)
    score = np.abs(W) * np.sqrt(np.diag(G))
    want = np.zeros_like(W, dtype=bool)
    np.put_along_axis(want, np.argsort(-score, axis=1)[:, :k], True, axis=1)
    np.testing.assert_array_equal(d.S != 0, want)
    np.testing.assert_array_equal(d.S, wanda(W, 0.3, X).S)


def test_oats_from_gram_equals_oats_from_x() -> None:
    W, X = _problem()
    a = oats(W, 3, 0.2, X, iters=8)
    b = oats(W, 3, 0.2, gram=X @ X.T, iters=8)
    np.testing.assert_allclose(b.U @ b.V, a.U @ a.V, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.S, a.S, rtol=0, atol=1e-10)


def test_whitened_svd_from_gram_error_is_the_whitened_tail() -> None:
    W, X = _problem()
    G = X @ X.T
    d = whitened_svd(W, 5, gram=G)
    C = np.linalg.cholesky(G + d.info.extra["ridge"] * np.eye(16))
    s = np.linalg.svd(W @ C, compute_uv=False)
    E = (W - d.U @ d.V) @ C
    assert np.sum(E**2) == pytest.approx(np.sum(s[5:] ** 2), rel=1e-8)
    np.testing.assert_allclose(d.U @ d.V, (lambda r: r.U @ r.V)(whitened_svd(W, 5, X)), rtol=0, atol=1e-9)


@pytest.mark.parametrize("call", [
    lambda W, **k: wanda(W, 0.5, **k),
    lambda W, **k: oats(W, 2, 0.2, iters=2, **k),
    lambda W, **k: whitened_svd(W, 2, **k),
    lambda W, **k: sparsegpt(W, 0.5, **k),
])
def test_data_arguments_are_checked(call) -> None:
    W, X = _problem()
    with pytest.raises(ValueError, match="exactly one of X .*got neither"):
        call(W)
    with pytest.raises(ValueError, match="exactly one of X .*got both"):
        call(W, X=X, gram=X @ X.T)
    with pytest.raises(ValueError, match=r"gram must have shape \(16, 16\)"):
        call(W, gram=np.eye(16)[:, :15])
    with pytest.raises(ValueError, match=r"X must have shape \(16, N\)"):
        call(W, X=X[:15])
    G = X @ X.T
    G[2, 2] = np.nan
    with pytest.raises(ValueError, match="gram contains NaN"):
        call(W, gram=G)
