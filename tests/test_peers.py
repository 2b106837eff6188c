"""Peer methods (OATS, Wanda, SVD-LLM whitened SVD) against plain numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_sparse.peers import oats, wanda, whitened_svd
from lowrank_sparse.solve.result import Decomposition


def _problem(m: int = 20, n: int = 16, N: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, n))
    X = rng.normal(size=(n, N)) * rng.uniform(0.2, 3.0, size=(n, 1))  # uneven input norms
    return W, X


def test_wanda_keeps_the_top_scores_of_every_row() -> None:
    W, X = _problem()
    k = int(0.25 * W.shape[1] + 0.5)
    d = wanda(W, 0.25, X)
    score = np.abs(W) * np.sqrt((X**2).sum(axis=1))
    want = np.zeros_like(W, dtype=bool)
    for i, row in enumerate(score):
        want[i, np.argsort(-row)[:k]] = True
    assert isinstance(d, Decomposition) and d.U.shape == (20, 0) and d.V.shape == (0, 16)
    np.testing.assert_array_equal(d.S != 0, want)
    np.testing.assert_array_equal(d.S[want], W[want])  # kept weights not updated
    assert d.params == 20 * k


def test_wanda_nm_pattern() -> None:
    W, X = _problem()
    d = wanda(W, 0.5, X, pattern="2:4")
    score = (np.abs(W) * np.sqrt((X**2).sum(axis=1))).reshape(20, 4, 4)
    want = np.zeros_like(score, dtype=bool)
    idx = np.argsort(-score, axis=2)[..., :2]
    np.put_along_axis(want, idx, True, axis=2)
    np.testing.assert_array_equal(d.S != 0, want.reshape(20, 16))


def test_whitened_svd_error_is_the_tail_of_the_whitened_spectrum() -> None:
    W, X = _problem()
    r = 5
    d = whitened_svd(W, r, X)
    lam = d.info.extra["ridge"]
    G = X @ X.T + lam * np.eye(16)
    C = np.linalg.cholesky(G)
    s = np.linalg.svd(W @ C, compute_uv=False)
    E = (W - d.U @ d.V) @ C
    assert np.linalg.matrix_rank(d.U @ d.V) == r
    assert np.sum(E**2) == pytest.approx(np.sum(s[r:] ** 2), rel=1e-8)
    # ... and it beats plain SVD on the output error ||(W - L) X||
    u, sv, vt = np.linalg.svd(W, full_matrices=False)
    Lp = (u[:, :r] * sv[:r]) @ vt[:r]
    assert np.linalg.norm((W - d.U @ d.V) @ X) < np.linalg.norm((W - Lp) @ X)


def test_whitened_svd_rank_deficient_inputs_factor() -> None:
    W, X = _problem(N=6)  # X X^T has rank 6 < 16
    d = whitened_svd(W, 4, X)
    assert np.all(np.isfinite(d.V)) and d.info.extra["ridge"] > 0


def _oats_numpy(W: np.ndarray, X: np.ndarray, r: int, k: int, iters: int):
    d = np.sqrt((X**2).sum(axis=1))
    A = W * d
    S = np.zeros_like(A)
    hist = []
    for _ in range(iters):
        u, s, vt = np.linalg.svd(A - S, full_matrices=False)
        L = (u[:, :r] * s[:r]) @ vt[:r]
        B = A - L
        S = np.zeros_like(A)
        idx = np.argsort(-np.abs(B), axis=1)[:, :k]
        np.put_along_axis(S, idx, np.take_along_axis(B, idx, axis=1), axis=1)
        hist.append(np.linalg.norm(A - L - S) / np.linalg.norm(A))
    return L / d, S / d, np.array(hist)


def test_oats_matches_a_numpy_alternation_and_decreases() -> None:
    W, X = _problem(seed=1)
    r, iters = 3, 15
    k = int(0.2 * 16 + 0.5)
    d = oats(W, r, 0.2, X, iters=iters)
    L, S, hist = _oats_numpy(W, X, r, k, iters)
    assert np.linalg.matrix_rank(d.U @ d.V, tol=1e-8) <= r
    assert np.all((d.S != 0).sum(axis=1) <= k)
    np.testing.assert_allclose(d.U @ d.V, L, atol=1e-8)
    np.testing.assert_allclose(d.S, S, atol=1e-8)
    np.testing.assert_allclose(d.info.objective, hist, rtol=1e-8)
    assert np.all(np.diff(hist) <= 1e-12)  # the scaled objective never increases
    assert d.params == r * (20 + 16) + int(np.count_nonzero(d.S))


def test_oats_library_structures_are_feasible() -> None:
    W, X = _problem(seed=2)
    d = oats(W.astype(np.float32), 2, 0.5, X.astype(np.float32), pattern="2:4", exact_svd=False)
    assert d.S.dtype == np.float32
    assert np.all((d.S.reshape(20, 4, 4) != 0).sum(axis=2) <= 2)
    du = oats(W, 2, 0.1, X, pattern="unstructured")
    assert np.count_nonzero(du.S) <= round(0.1 * 20 * 16)


@pytest.mark.parametrize("pattern", ["2:4", "unstructured", "per_row"])
def test_oats_at_density_zero_is_the_scaled_truncated_svd(pattern) -> None:
    """No S at density 0, whatever the pattern (N:M's budget is fixed otherwise): L is
    the rank-r truncation of W diag(d) (d = input norms), unscaled, from numpy's SVD."""
    W, X = _problem(seed=3)
    d = oats(W, 3, 0.0, X, pattern=pattern, iters=5)
    assert np.count_nonzero(d.S) == 0
    dn = np.sqrt((X**2).sum(axis=1))
    u, s, vt = np.linalg.svd(W * dn, full_matrices=False)
    np.testing.assert_allclose(d.U @ d.V, ((u[:, :3] * s[:3]) @ vt[:3]) / dn, atol=1e-8)
