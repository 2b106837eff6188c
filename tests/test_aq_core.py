"""AQ core: encoding (beam vs greedy vs brute force), decode, least-squares update, configs.

Every error is recomputed here with plain numpy from the codes and codebooks.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lowrank_sparse import _core
from lowrank_sparse.quant import (
    AQConfig,
    decode,
    encode,
    encode_greedy,
    learn_codebooks,
    ls_update,
    merge_tensor,
    split_tensor,
)


def np_decode(codes: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Independent reference: sum_m C[m, codes[:, m]] in float64."""
    C = C.astype(np.float64)
    out = np.zeros((codes.shape[0], C.shape[2]))
    for m in range(C.shape[0]):
        out += C[m][codes[:, m].astype(np.int64)]
    return out


def np_err(X: np.ndarray, codes: np.ndarray, C: np.ndarray) -> np.ndarray:
    return ((X.astype(np.float64) - np_decode(codes, C)) ** 2).sum(axis=1)


@pytest.fixture(scope="module")
def digit_rows() -> np.ndarray:
    """Real data: rows of the 8x8 sklearn digit images, scaled to [0, 1] -> (14376, 8)."""
    return (load_digits().images.reshape(-1, 8) / 16.0).astype(np.float32)


def test_error_decreases_with_M(digit_rows: np.ndarray) -> None:
    errs = []
    for M in (1, 2, 4):
        cfg = AQConfig(M=M, K=16, d=8, beam=4, iters=3, kmeans_iters=5, seed=0)
        C, codes = learn_codebooks(digit_rows, cfg)
        assert C.shape == (M, 16, 8) and codes.shape == (digit_rows.shape[0], M)
        assert codes.dtype == np.uint16
        errs.append(float(np_err(digit_rows, codes, C).mean()))
    base = float(((digit_rows - digit_rows.mean(0)) ** 2).sum(1).mean())
    assert errs[0] < base
    assert errs[0] > errs[1] > errs[2]
    # each doubling of M buys a clear reduction, not a rounding-level one
    assert errs[1] < 0.8 * errs[0] and errs[2] < 0.8 * errs[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("M", [2, 3, 4], ids=lambda m: f"M{m}")
def test_beam_never_worse_than_greedy(rng: np.random.Generator, M: int, dtype: type) -> None:
    X = rng.standard_normal((3000, 6)).astype(dtype)
    # random (unlearnt) codebooks of decreasing scale: greedy is far from optimal here
    C = (rng.standard_normal((M, 32, 6)) * (0.8 ** np.arange(M))[:, None, None]).astype(dtype)
    cb, eb = encode(X, C, beam=4, threads=2)
    cg, eg = encode_greedy(X, C, threads=2)
    rb, rg = np_err(X, cb, C), np_err(X, cg, C)
    tol = 1e-5 * (1 + rg) if dtype == np.float32 else 1e-12 * (1 + rg)
    assert np.all(rb <= rg + tol)
    assert rb.mean() < 0.97 * rg.mean()
    # the returned per-vector errors are the true ones
    np.testing.assert_allclose(eb, rb, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5)
    np.testing.assert_allclose(eg, rg, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5)


def test_greedy_is_sequential_residual(rng: np.random.Generator) -> None:
    X = rng.standard_normal((200, 5)).astype(np.float64)
    C = rng.standard_normal((3, 8, 5))
    codes, _ = encode_greedy(X, C)
    R = X.copy()
    for m in range(3):
        ref = np.argmin(((R[:, None, :] - C[m][None]) ** 2).sum(-1), axis=1)
        np.testing.assert_array_equal(codes[:, m], ref)
        R -= C[m][ref]


@pytest.mark.parametrize(("M", "K", "beam"), [(2, 4, 8), (3, 3, 27)], ids=["M2K4", "M3K3"])
def test_beam_matches_brute_force(rng: np.random.Generator, M: int, K: int, beam: int) -> None:
    X = rng.standard_normal((400, 3))
    C = rng.standard_normal((M, K, 3))
    codes, err = encode(X, C, beam=beam, refine=0)
    tuples = np.array(list(itertools.product(range(K), repeat=M)))  # (K^M, M)
    recon = sum(C[m][tuples[:, m]] for m in range(M))  # (K^M, d)
    all_err = ((X[:, None, :] - recon[None]) ** 2).sum(-1)  # (N, K^M)
    best = all_err.argmin(1)
    np.testing.assert_array_equal(codes, tuples[best])
    np.testing.assert_allclose(err, all_err.min(1), rtol=1e-10)


def test_threads_do_not_change_result(rng: np.random.Generator) -> None:
    X = rng.standard_normal((5000, 8)).astype(np.float32)
    C = rng.standard_normal((2, 64, 8)).astype(np.float32)
    c1, e1 = encode(X, C, beam=4, threads=1)
    c2, e2 = encode(X, C, beam=4, threads=2)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(e1, e2)


def test_decode_matches_numpy(rng: np.random.Generator) -> None:
    C = rng.standard_normal((3, 10, 4)).astype(np.float32)
    codes = rng.integers(0, 10, size=(50, 3)).astype(np.uint16)
    np.testing.assert_allclose(decode(codes, C), np_decode(codes, C), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(decode(torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(C)),
                               np_decode(codes, C), rtol=1e-6, atol=1e-6)


def test_ls_update_matches_lstsq(rng: np.random.Generator) -> None:
    N, M, K, d = 600, 2, 6, 4
    X = rng.standard_normal((N, d))
    C0 = rng.standard_normal((M, K, d))
    codes, _ = encode(X, C0, beam=4)
    before = np_err(X, codes, C0).sum()
    C1 = ls_update(X, codes, C0, ridge=1e-9)
    B = np.zeros((N, M * K))
    for m in range(M):
        B[np.arange(N), m * K + codes[:, m].astype(np.int64)] = 1.0
    Cl, *_ = np.linalg.lstsq(B, X, rcond=None)
    # B is rank deficient (a constant can move between codebooks): compare reconstructions
    np.testing.assert_allclose(B @ C1.reshape(M * K, d), B @ Cl, atol=1e-6)
    after = np_err(X, codes, C1).sum()
    assert after < before
    np.testing.assert_allclose(after, ((X - B @ Cl) ** 2).sum(), rtol=1e-8)


def test_ls_update_keeps_unused_codewords(rng: np.random.Generator) -> None:
    X = rng.standard_normal((100, 3))
    C0 = rng.standard_normal((2, 5, 3))
    codes = rng.integers(0, 4, size=(100, 2)).astype(np.uint16)  # codeword 4 never used
    C1 = ls_update(X, codes, C0, ridge=1e-6)
    np.testing.assert_allclose(C1[:, 4], C0[:, 4], atol=1e-9)


def test_ls_update_single_codebook_is_cluster_mean(rng: np.random.Generator) -> None:
    X = rng.standard_normal((300, 4))
    codes = rng.integers(0, 7, size=(300, 1)).astype(np.uint16)
    C1 = ls_update(X, codes, np.zeros((1, 7, 4)), ridge=1e-12)
    for k in range(7):
        np.testing.assert_allclose(C1[0, k], X[codes[:, 0] == k].mean(0), atol=1e-9)


def test_ls_update_large_MK_block_path_reduces_error(rng: np.random.Generator) -> None:
    # M*K = 2*5000 > 8192: block-coordinate path
    X = rng.standard_normal((20000, 2)).astype(np.float32)
    C0 = rng.standard_normal((2, 5000, 2)).astype(np.float32) * 0.5
    codes = rng.integers(0, 5000, size=(20000, 2)).astype(np.uint16)
    before = np_err(X, codes, C0).mean()
    C1 = ls_update(X, codes, C0)
    assert np_err(X, codes, C1).mean() < 0.9 * before


def test_split_merge_roundtrip(rng: np.random.Generator) -> None:
    W = torch.from_numpy(rng.standard_normal((7, 5, 3)) * 0.02)
    vecs, sp = split_tensor(W, 8)
    assert vecs.shape == (14, 8) and sp.pad == 7 and sp.numel == 105
    np.testing.assert_allclose(sp.scale, np.sqrt((W.numpy() ** 2).mean()), rtol=1e-7)
    assert sp.scale == float(np.float32(sp.scale))
    np.testing.assert_allclose(np.sqrt((vecs[:, :] ** 2).sum() / 105), 1.0, rtol=1e-5)
    assert np.all(vecs.reshape(-1)[105:] == 0)
    back = merge_tensor(vecs, sp)
    np.testing.assert_allclose(back.numpy(), W.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [dict(M=0), dict(K=1), dict(K=65537), dict(d=0), dict(d=-3), dict(beam=0), dict(ridge=0.0)],
    ids=["M0", "K1", "K65537", "d0", "dneg", "beam0", "ridge0"],
)
def test_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AQConfig(**kwargs)


def test_core_rejects_bad_arrays(rng: np.random.Generator) -> None:
    X = rng.standard_normal((10, 4)).astype(np.float32)
    C = rng.standard_normal((2, 8, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="float32"):
        _core.aq_encode_beam(X, C.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.aq_encode_beam(np.asfortranarray(rng.standard_normal((10, 4)).astype(np.float32)), C)
    with pytest.raises(ValueError, match="sub-vector length"):
        _core.aq_encode_beam(X[:, :3].copy(), C)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        _core.aq_encode_beam(Xn, C)
    with pytest.raises(ValueError, match="beam"):
        _core.aq_encode_beam(X, C, beam=0)
    with pytest.raises(ValueError, match="out of range"):
        _core.aq_decode(np.full((3, 2), 8, dtype=np.uint16), C)
    with pytest.raises(ValueError, match="K must be"):
        _core.aq_encode_beam(X, C[:, :1].copy())
    with pytest.raises(ValueError, match="ridge"):
        _core.aq_ls_update(X, np.zeros((10, 2), np.uint16), C, 0.0)
    with pytest.raises(ValueError):
        learn_codebooks(X, AQConfig(M=1, K=4, d=8))
