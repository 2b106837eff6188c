"""rank_only / sparse_only against closed forms computed independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_sparse.baselines import rank_only, sparse_only
from lowrank_sparse.solve.refit import REFIT_RIDGE, refit_support


def test_rank_only_identity_gram_is_truncated_svd(rng: np.random.Generator) -> None:
    W = torch.from_numpy(rng.normal(size=(20, 30)))
    d = rank_only(W, 4, gram=torch.eye(30, dtype=torch.float64))
    U, s, Vt = torch.linalg.svd(W)
    torch.testing.assert_close(d.U @ d.V, (U[:, :4] * s[:4]) @ Vt[:4])
    d0 = rank_only(W, 4)
    torch.testing.assert_close(d0.U @ d0.V, (U[:, :4] * s[:4]) @ Vt[:4])
    assert d.params == 4 * (20 + 30)


def test_rank_only_whitened_is_optimal(rng: np.random.Generator) -> None:
    n = 25
    X = rng.normal(size=(n, 400)) * np.linspace(3, 0.05, n)[:, None]
    W = rng.normal(size=(15, n))
    d = rank_only(W, 3, X=X)
    # optimum = tail singular values of W X / sqrt(N) (Eckart-Young on the data)
    sv = np.linalg.svd(W @ X, compute_uv=False)
    opt = np.sqrt((sv[3:] ** 2).sum())
    got = np.linalg.norm((W - d.U @ d.V) @ X)
    assert got == pytest.approx(opt, rel=1e-8)
    U, s, Vt = np.linalg.svd(W)
    assert np.linalg.norm((W - (U[:, :3] * s[:3]) @ Vt[:3]) @ X) > got


def test_sparse_only_no_data_is_magnitude_topk(rng: np.random.Generator) -> None:
    W = rng.normal(size=(10, 12))
    d = sparse_only(W, 0.25)
    ref = np.zeros_like(W)
    keep = np.argsort(-np.abs(W).ravel(), kind="stable")[:30]
    ref.ravel()[keep] = W.ravel()[keep]
    np.testing.assert_array_equal(d.S, ref)
    assert d.U.shape == (10, 0) and d.params == 30


def ridge_refit(X: np.ndarray, w: np.ndarray, J: np.ndarray, rel: float = REFIT_RIDGE) -> np.ndarray:
    """Oracle: argmin_s ||X^T (w - s)||^2 / N + lam ||s - w_J||^2 over s supported on J,
    lam = rel * mean(diag(X X^T / N)), by an augmented numpy least-squares problem."""
    N = X.shape[1]
    lam = rel * float(np.mean(np.sum(X * X, axis=1) / N))
    A = np.vstack([X[J].T / np.sqrt(N), np.sqrt(lam) * np.eye(len(J))])
    b = np.concatenate([X.T @ w / np.sqrt(N), np.sqrt(lam) * w[J]])
    return np.linalg.lstsq(A, b, rcond=None)[0]


def test_sparse_only_refit_is_row_least_squares(rng: np.random.Generator) -> None:
    n = 16
    X = rng.normal(size=(n, 200)) * np.linspace(2, 0.2, n)[:, None]
    W = rng.normal(size=(6, n))
    d = sparse_only(W, 0.3, X=X)
    for i in range(6):
        J = np.flatnonzero(d.S[i])
        np.testing.assert_allclose(d.S[i, J], ridge_refit(X, W[i], J), rtol=1e-6, atol=1e-8)
        # the ridge is small: the plain least-squares solution is within 1e-3
        sol, *_ = np.linalg.lstsq(X[J].T, X.T @ W[i], rcond=None)  # min ||X^T (w - s)||
        np.testing.assert_allclose(d.S[i, J], sol, rtol=1e-3, atol=1e-3)


def test_refit_stays_bounded_with_fewer_samples_than_kept_entries(rng: np.random.Generator) -> None:
    # 64 inputs, 24 samples of rank-24 data, ~45 kept per row: plain least squares on the
    # kept columns is underdetermined and float32 rounding in the Gram's null space used
    # to blow the values up (|S| ~ 20x |W| on AlexNet's first classifier layer)
    n, N = 64, 24
    X = rng.normal(size=(n, N)).astype(np.float32)
    W = rng.normal(size=(8, n)).astype(np.float32) * 0.05
    d = sparse_only(W, 0.7, X=X)
    assert np.abs(d.S).max() <= 2 * np.abs(W).max()
    for i in range(8):
        J = np.flatnonzero(d.S[i])
        np.testing.assert_allclose(d.S[i, J], ridge_refit(X.astype(np.float64), W[i].astype(np.float64), J),
                                   rtol=2e-3, atol=2e-3 * np.abs(W).max())


@pytest.mark.parametrize("structure", ["column", "row"])
def test_refit_support_group_structures(structure: str, rng: np.random.Generator) -> None:
    R = torch.from_numpy(rng.normal(size=(5, 7)))
    X = torch.from_numpy(rng.normal(size=(7, 50)))
    G = X @ X.T / 50
    mask = torch.zeros(5, 7, dtype=torch.bool)
    if structure == "column":
        mask[:, [1, 4]] = True
    else:
        mask[[0, 3]] = True
    S = refit_support(R, mask, G)
    assert bool((S[~mask] == 0).all())
    for i in range(5):
        J = mask[i].numpy()
        if J.any():
            sol = ridge_refit(X.numpy(), R[i].numpy(), np.flatnonzero(J))
            np.testing.assert_allclose(S[i, mask[i]].numpy(), sol, rtol=1e-6, atol=1e-8)
