"""SparseGPT (lowrank_sparse.peers.sparsegpt) against a plain float64 loop of the
paper's column-wise OBS update, written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_sparse.peers import sparsegpt, wanda
from lowrank_sparse.solve.result import Decomposition


def _problem(m: int = 6, n: int = 16, N: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, n))
    mix = np.eye(n) + 0.4 * rng.normal(size=(n, n))  # correlated inputs: the updates matter
    X = mix @ rng.normal(size=(n, N)) * rng.uniform(0.3, 3.0, size=(n, 1))
    return W, X


def _reference(W: np.ndarray, X: np.ndarray, density: float, block: int, damp: float = 0.01) -> np.ndarray:
    """Column by column, no lazy batching: at the start of every block of ``block``
    columns, each row keeps its floor(density*b + 0.5) entries of largest w^2 / U_jj^2
    (U upper, U^T U = H^{-1}); every column pruned by err = (w - kept w) / U_jj with
    W[:, j:] -= err U[j, j:] on all columns to its right at once."""
    m, n = W.shape
    H = X @ X.T
    H = H + damp * np.mean(np.diag(H)) * np.eye(n)
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    W = W.copy()
    keep = np.zeros((m, n), dtype=bool)
    for j in range(n):
        if j % block == 0:
            cols = np.arange(j, min(j + block, n))
            k = int(density * len(cols) + 0.5)
            sal = W[:, cols] ** 2 / np.diag(U)[cols] ** 2
            for i in range(m):
                keep[i, cols[np.argsort(-sal[i])[:k]]] = True
        err = np.where(keep[:, j], 0.0, W[:, j]) / U[j, j]
        W[:, j:] -= np.outer(err, U[j, j:])
        W[~keep[:, j], j] = 0.0
    return W


@pytest.mark.parametrize("block", [16, 4])
def test_equals_the_column_loop_reference(block: int) -> None:
    W, X = _problem()
    d = sparsegpt(W, 0.5, X, block_size=block)
    want = _reference(W, X, 0.5, block)
    assert isinstance(d, Decomposition) and d.U.shape == (6, 0) and d.V.shape == (0, 16)
    np.testing.assert_array_equal(d.S != 0, want != 0)
    np.testing.assert_allclose(d.S, want, rtol=0, atol=1e-10)
    assert np.all((d.S != 0).sum(axis=1) == 8)
    # the kept weights were updated (not Wanda-style copies of W)
    assert np.abs(d.S[d.S != 0] - W[d.S != 0]).max() > 1e-3


def test_gram_gives_the_same_result_as_x() -> None:
    W, X = _problem()
    a = sparsegpt(W, 0.25, X, block_size=8)
    b = sparsegpt(W, 0.25, gram=X @ X.T / X.shape[1], block_size=8)  # any positive scale
    np.testing.assert_allclose(a.S, b.S, rtol=0, atol=1e-10)


def test_density_one_leaves_the_weight_unchanged() -> None:
    W, X = _problem()
    Wt = torch.from_numpy(W).float()
    d = sparsegpt(Wt, 1.0, torch.from_numpy(X).float(), block_size=4)
    assert d.S.dtype == torch.float32 and torch.equal(d.S, Wt)


def test_beats_wanda_on_outlier_inputs() -> None:
    rng = np.random.default_rng(7)
    m, n, N = 32, 64, 512
    W = rng.normal(size=(m, n))
    X = (np.eye(n) + 0.3 * rng.normal(size=(n, n))) @ rng.normal(size=(n, N))
    X[rng.choice(n, 4, replace=False)] *= 25.0  # outlier input channels
    for density in (0.5, 0.3):
        e_gpt = np.linalg.norm((W - sparsegpt(W, density, X, block_size=16).S) @ X)
        e_wanda = np.linalg.norm((W - wanda(W, density, X).S) @ X)
        # measured: 0.895 (density 0.5) and 0.847 (0.3) of Wanda's error
        assert e_gpt < 0.95 * e_wanda, (density, e_gpt, e_wanda)


def test_two_four_pattern_in_every_group() -> None:
    W, X = _problem(m=10, n=32)
    d = sparsegpt(W, 0.5, X, pattern="2:4", block_size=8)
    per_group = (d.S != 0).reshape(10, 8, 4).sum(axis=2)
    assert np.all(per_group == 2)
    # the group's mask follows the saliency of the weights as updated so far: the
    # first group of every row keeps W's two entries of largest w^2 / U_jj^2
    H = X @ X.T
    H += 0.01 * np.mean(np.diag(H)) * np.eye(32)
    u = np.diag(np.linalg.cholesky(np.linalg.inv(H)).T)
    top = np.argsort(-(W[:, :4] ** 2 / u[:4] ** 2), axis=1)[:, :2]
    want = np.zeros((10, 4), dtype=bool)
    np.put_along_axis(want, top, True, axis=1)
    np.testing.assert_array_equal(d.S[:, :4] != 0, want)


@pytest.mark.parametrize("kwargs, match", [
    (dict(density=1.5), "density"),
    (dict(density=-0.1), "density"),
    (dict(density=float("nan")), "density"),
    (dict(pattern="3:2"), "pattern"),
    (dict(pattern="row"), "pattern"),
    (dict(pattern="2:3"), "M=3"),
    (dict(block_size=0), "block_size"),
    (dict(damp=-1.0), "damp"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    W, X = _problem()
    args = dict(density=0.5, pattern="per_row", block_size=8) | kwargs
    with pytest.raises(ValueError, match=match):
        sparsegpt(W, args.pop("density"), X, **args)


def test_bad_data_is_named() -> None:
    W, X = _problem()
    with pytest.raises(ValueError, match="gram"):
        sparsegpt(W, 0.5, gram=np.eye(15))
    with pytest.raises(ValueError, match="gram"):
        sparsegpt(W, 0.5, gram=np.full((16, 16), np.nan))
    Xn = X.copy()
    Xn[3, 5] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        sparsegpt(W, 0.5, Xn)
    Wn = W.copy()
    Wn[0, 0] = np.inf
    with pytest.raises(ValueError, match="W contains"):
        sparsegpt(Wn, 0.5, X)
    with pytest.raises(ValueError, match="exactly one of X"):
        sparsegpt(W, 0.5)
    with pytest.raises(ValueError, match="exactly one of X"):
        sparsegpt(W, 0.5, X, gram=X @ X.T)
