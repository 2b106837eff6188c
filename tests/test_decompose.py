"""decompose(): types in/out, feasibility, data-aware quality on real data (digits),
and every bad input raising the right exception."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_sparse as lrs
from lowrank_sparse.decomposition import decompose


def test_numpy_in_numpy_out_and_info(rng: np.random.Generator) -> None:
    W = rng.normal(size=(20, 30)).astype(np.float32)
    d = decompose(W, 3, 0.1, max_iter=40)
    assert isinstance(d.S, np.ndarray) and d.S.dtype == np.float32 and d.U.shape == (20, 3)
    assert d.info.backend == "native" and 0 < d.info.iterations <= 40
    assert len(d.info.primal_residuals) == d.info.iterations and d.info.seconds > 0
    assert np.count_nonzero(d.S) <= 60
    assert np.linalg.matrix_rank(d.U @ d.V) <= 3
    d2 = lrs.decompose(W, 3, 0.1, max_iter=40)  # the public name, however imported
    np.testing.assert_array_equal(d2.S, d.S)


def test_tensor_in_tensor_out_torch_backend(rng: np.random.Generator) -> None:
    W = torch.from_numpy(rng.normal(size=(16, 24)))
    d = decompose(W, 2, 0.05, structure="column", backend="torch", max_iter=30)
    assert isinstance(d.U, torch.Tensor) and d.U.dtype == torch.float64
    assert int((d.S.abs().sum(0) > 0).sum()) <= round(0.05 * 24 * 16 / 16)
    W2 = W.clone()
    decompose(W, 2, 0.05)
    assert torch.equal(W, W2)  # input untouched


def test_refit_never_hurts_and_error_is_reported(rng: np.random.Generator) -> None:
    n = 30
    X = rng.normal(size=(n, 300)) * np.linspace(2, 0.1, n)[:, None]
    W = rng.normal(size=(12, n))
    d = decompose(W, 2, 0.2, X=X, max_iter=80)
    M = d.U @ d.V + d.S
    err = np.linalg.norm((W - M) @ X) / np.linalg.norm(W @ X)
    assert d.info.extra["error"] == pytest.approx(err, rel=1e-6)
    assert d.info.extra["error"] <= d.info.extra["error_before_refit"] + 1e-12


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_weight_refit_in_row_blocks_matches_plain_formula(rng: np.random.Generator, backend: str) -> None:
    # n = 4096: blocks of 64 rows, so 150 rows take three blocks (the last one partial).
    W = rng.normal(size=(150, 4096)).astype(np.float32)
    d = decompose(W, 4, 0.02, backend=backend, max_iter=6)
    L = d.U.astype(np.float64) @ d.V.astype(np.float64)
    keep = d.S != 0
    assert keep.sum() <= round(0.02 * W.size)
    # on the support S equals W - L (float32 rounding of the product), zero elsewhere
    np.testing.assert_allclose(d.S[keep], (W - L)[keep], rtol=1e-5, atol=1e-5)
    err = np.linalg.norm(W - L - d.S) / np.linalg.norm(W)
    assert d.info.extra["refit"] is True
    assert d.info.extra["error"] == pytest.approx(err, rel=1e-5)
    assert d.info.extra["error"] < d.info.extra["error_before_refit"]


def _digits_layer():
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64) / 16.0  # (1797, 64) real images
    rng = np.random.default_rng(0)
    W = rng.normal(size=(48, 64)) / 8.0  # a random first layer on real inputs
    b = 0.1 * rng.normal(size=48)
    return W, x.T.copy(), b


def test_relu_aware_beats_weight_space_on_digits() -> None:
    W, X, b = _digits_layer()
    relu = lambda z: np.maximum(z, 0)
    Y = relu(W @ X + b[:, None])

    def post_err(d) -> float:
        M = d.U @ d.V + d.S
        return float(np.linalg.norm(Y - relu(M @ X + b[:, None])) / np.linalg.norm(Y))

    da = decompose(W, 6, 0.05, X=X, bias=b, activation="relu", max_iter=60, subsample=1000)
    dw = decompose(W, 6, 0.05, max_iter=60)
    assert da.info.extra["samples"] == 1000
    assert post_err(da) < post_err(dw)


BAD = {
    "W-3d": (dict(W=np.ones((2, 3, 4))), ValueError),
    "W-empty": (dict(W=np.ones((0, 3))), ValueError),
    "W-nan": (dict(W=np.array([[1.0, np.nan], [0.0, 1.0]])), ValueError),
    "W-inf": (dict(W=np.array([[1.0, np.inf], [0.0, 1.0]])), ValueError),
    "W-int": (dict(W=np.ones((3, 4), dtype=np.int64)), TypeError),
    "W-bool": (dict(W=np.ones((3, 4), dtype=bool)), TypeError),
    "W-list": (dict(W=[[1.0, 2.0]]), TypeError),
    "rank-neg": (dict(rank=-1), ValueError),
    "rank-big": (dict(rank=9), ValueError),
    "rank-float": (dict(rank=1.5), TypeError),
    "both-zero": (dict(rank=0, density=0.0), ValueError),
    "density-1": (dict(density=1.0), ValueError),
    "density-neg": (dict(density=-0.1), ValueError),
    "structure": (dict(structure="diagonal"), ValueError),
    "nm-divide": (dict(structure="2:3"), ValueError),
    "X-shape": (dict(X=np.ones((5, 10))), ValueError),
    "gram-shape": (dict(gram=np.eye(7)), ValueError),
    "bias-shape": (dict(X=np.ones((8, 10)), activation="relu", bias=np.ones(3)), ValueError),
    "activation": (dict(activation="softplus", X=np.ones((8, 10))), ValueError),
    "nonlinear-no-X": (dict(activation="relu"), ValueError),
    "backend": (dict(backend="cuda"), ValueError),
    "slices": (dict(slices=3), ValueError),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_inputs_raise(case: str) -> None:
    kw, exc = BAD[case]
    args = dict(W=np.ones((6, 8)), rank=2, density=0.1)
    args.update(kw)
    with pytest.raises(exc):
        decompose(args.pop("W"), args.pop("rank"), args.pop("density"), **args)


def test_native_refuses_cuda_tensor() -> None:
    from lowrank_sparse._validate import check_backend

    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU"):
            decompose(torch.ones(4, 4, device="cuda"), 1, 0.1, backend="native")
    else:  # the check itself, on a meta tensor standing in for a device tensor
        with pytest.raises(ValueError, match="CPU"):
            check_backend("native", torch.empty(4, 4, device="meta"))


def test_relaxed_reaches_the_convex_optimum(rng: np.random.Generator) -> None:
    """Weight-space relaxed problem vs an independent block-coordinate-descent solve
    (exact SVT / soft-thresholding with full numpy SVDs; converges for this jointly
    convex problem with separable nonsmooth terms)."""
    W = rng.normal(size=(30, 40)) @ np.diag(np.linspace(2, 0.1, 40))
    ln, ls = 1.0, 0.3

    def obj(L: np.ndarray, S: np.ndarray) -> float:
        return 0.5 * np.linalg.norm(W - L - S) ** 2 + ln * np.linalg.svd(L, compute_uv=False).sum() + ls * np.abs(S).sum()

    S = np.zeros_like(W)
    for _ in range(3000):
        U, s, Vt = np.linalg.svd(W - S, full_matrices=False)
        L = (U * np.maximum(s - ln, 0)) @ Vt
        A = W - L
        S = np.sign(A) * np.maximum(np.abs(A) - ls, 0)
    d = decompose(W, 30, 0.1, relaxed=True, lam_nuclear=ln, lam_sparse=ls, max_iter=2000, tol=1e-7)
    assert d.info.converged
    assert obj(d.U @ d.V, d.S) == pytest.approx(obj(L, S), rel=1e-7)
    assert d.U.shape[1] == np.linalg.matrix_rank(L)


# ---- input validation: the finiteness test behind every entry point ----
_SPECIALS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 3e38, -3e38, 1.7e308, -1.7e308, 0.0])


@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    size=st.integers(1, 300),
    specials=st.lists(st.tuples(st.integers(0, 10**6), _SPECIALS), max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_all_finite_agrees_with_numpy(dtype, size, specials, seed) -> None:
    """The float64-sum shortcut answers exactly what np.isfinite(a).all() does, also when
    a finite float64 tensor's sum overflows (1.7e308 + 1.7e308) or infinities cancel."""
    from lowrank_sparse._validate import all_finite

    a = np.random.default_rng(seed).standard_normal(size).astype(dtype)
    with np.errstate(over="ignore"):
        for pos, v in specials:
            a[pos % size] = dtype(v)  # 1.7e308 is inf in float32
    assert all_finite(torch.from_numpy(a)) == bool(np.isfinite(a).all())


def test_nonfinite_weight_is_rejected_by_name() -> None:
    W = torch.randn(20, 30)
    W[3, 4] = float("inf")
    with pytest.raises(ValueError, match="W contains NaN or Inf"):
        decompose(W, rank=2, density=0.1)


def _gram(rng: np.random.Generator, n: int, N: int) -> np.ndarray:
    """A Gram matrix with outlier channels and correlated inputs, X X^T / N."""
    X = rng.normal(size=(n, 4)) @ rng.normal(size=(4, N)) + 0.3 * rng.normal(size=(n, N))
    X[:3] *= 8.0
    return X @ X.T / N


@pytest.mark.parametrize("a", [0.1, 0.5, 1.0], ids=["a0.1", "a0.5", "a1"])
def test_gram_shrinkage_is_the_shrunk_gram(rng: np.random.Generator, a: float) -> None:
    """SolverConfig(gram_shrinkage=a) solves with (1 - a) G + a diag(G), written here in
    numpy: the same factors as passing that matrix."""
    W = rng.normal(size=(20, 12))
    G = _gram(rng, 12, 200)
    shrunk = (1 - a) * G + a * np.diag(np.diag(G))
    got = decompose(W, 2, 0.1, gram=G, config=lrs.SolverConfig(gram_shrinkage=a, max_iter=40))
    ref = decompose(W, 2, 0.1, gram=shrunk, max_iter=40)
    for x, y in ((got.U, ref.U), (got.V, ref.V), (got.S, ref.S)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
    plain = decompose(W, 2, 0.1, gram=G, max_iter=40)
    assert not np.allclose(plain.S, got.S)  # the setting changes the answer


def test_gram_shrinkage_one_is_the_diagonal_metric(rng: np.random.Generator) -> None:
    """a = 1 keeps only the input energies: sparse_only's refit in a diagonal metric is
    plain masking (each kept entry keeps W's value), checked against W itself."""
    W = rng.normal(size=(16, 10))
    G = _gram(rng, 10, 100)
    from lowrank_sparse.baselines import sparse_only

    d = sparse_only(W, 0.3, X=None, gram=G, config=lrs.SolverConfig(gram_shrinkage=1.0))
    kept = d.S != 0
    np.testing.assert_allclose(d.S[kept], W[kept], rtol=1e-12)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.2", None], ids=["neg", "above1", "bool", "str", "none"])
def test_gram_shrinkage_bad_values(rng: np.random.Generator, bad) -> None:
    W = rng.normal(size=(8, 6))
    with pytest.raises(ValueError, match="gram_shrinkage"):
        decompose(W, 1, 0.1, gram=np.eye(6), config=lrs.SolverConfig(gram_shrinkage=bad))


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("nm", ["2:4", "1:4"])
def test_nm_structure_at_density_zero_is_low_rank_only(rng: np.random.Generator, backend: str, nm: str) -> None:
    """N:M S at density 0 means no sparse part: S is all zeros and L is the truncated
    SVD (Eckart-Young error from numpy's singular values)."""
    W = rng.standard_normal((24, 40))
    d = decompose(W, 5, 0.0, nm, backend=backend, max_iter=50)
    assert np.count_nonzero(d.S) == 0
    s = np.linalg.svd(W, compute_uv=False)
    err = np.linalg.norm(W - d.U @ d.V) / np.linalg.norm(W)
    assert err == pytest.approx(np.sqrt((s[5:] ** 2).sum() / (s**2).sum()), rel=1e-6)
