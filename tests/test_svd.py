"""Warm-started truncated SVD and SVT in the C++ core vs full SVDs (torch.linalg.svd, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowrank_sparse.ops as ops

import reference as ref  # tests/ is on sys.path (pytest rootdir conftest, prepend mode)

DTYPES = [pytest.param(np.float32, 2e-4, id="f32"), pytest.param(np.float64, 1e-9, id="f64")]
SHAPES = [pytest.param((200, 150), id="tall"), pytest.param((120, 300), id="wide")]


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_full_svd_on_decaying_spectrum(rng, dtype, tol, shape):
    m, n = shape
    A, _ = ref.decaying_matrix(rng, m, n, decay=0.7, dtype=dtype)
    A0 = A.copy()
    r = 10
    U, s, Vt, V = ops.truncated_svd(A, r, oversample=10, power_iters=4)
    assert U.shape == (m, r) and s.shape == (r,) and Vt.shape == (r, n) and V.shape == (n, 20)
    assert U.dtype == dtype and s.dtype == dtype
    Ut, st, Vtt = torch.linalg.svd(torch.from_numpy(A.astype(np.float64)), full_matrices=False)
    np.testing.assert_allclose(s, st[:r].numpy(), rtol=tol * 10, atol=tol)
    assert ref.subspace_distance(U, Ut[:, :r].numpy()) < 50 * tol**0.5
    assert ref.subspace_distance(Vt.T, Vtt[:r].T.numpy()) < 50 * tol**0.5
    # factors are orthonormal, V is orthonormal, input untouched
    np.testing.assert_allclose(U.T @ U, np.eye(r), atol=20 * tol)
    np.testing.assert_allclose(V.T @ V, np.eye(20), atol=20 * tol)
    np.testing.assert_array_equal(A, A0)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_warm_start_from_exact_subspace_converges_in_one_iteration(rng, dtype, tol):
    A, s_true = ref.decaying_matrix(rng, 180, 140, decay=0.9, dtype=dtype)
    r, p = 8, 12
    _, s_ex, Vt_ex = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    V0 = np.ascontiguousarray(Vt_ex[:p].T).astype(dtype)
    V0_copy = V0.copy()
    U, s, Vt, V = ops.truncated_svd(A, r, V0=V0, power_iters=1)
    np.testing.assert_allclose(s, s_ex[:r], rtol=tol, atol=tol)
    U_ex = np.linalg.svd(A.astype(np.float64), full_matrices=False)[0][:, :r]
    assert ref.subspace_distance(U, U_ex) < 100 * tol
    assert ref.subspace_distance(Vt.T, Vt_ex[:r].T) < 100 * tol
    np.testing.assert_array_equal(V0, V0_copy)  # warm start not modified in place


def test_warm_restarts_improve_like_more_iterations(rng):
    """k calls with power_iters=1, each warm-started from the last V, equal one call
    with power_iters=k (same subspace iteration)."""
    A, _ = ref.decaying_matrix(rng, 160, 130, decay=0.85)
    _, s1, _, V = ops.truncated_svd(A, 6, power_iters=1, seed=3)
    for _ in range(3):
        _, s1, _, V = ops.truncated_svd(A, 6, V0=V, power_iters=1)
    _, s4, _, _ = ops.truncated_svd(A, 6, power_iters=4, seed=3)
    np.testing.assert_allclose(s1, s4, rtol=1e-10)
    np.testing.assert_allclose(s1, np.linalg.svd(A, compute_uv=False)[:6], rtol=1e-6)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_svt_matches_full_svd_prox(rng, dtype, tol):
    A, s = ref.decaying_matrix(rng, 90, 110, decay=0.75, dtype=dtype)
    tau = float(s[5] + s[6]) / 2  # 6 singular values above tau, rank budget 10 covers them
    U, sv, Vt, V = ops.svt(A, tau, 10, power_iters=4)
    assert sv.shape == (6,) and np.all(sv > 0)
    np.testing.assert_allclose((U * sv) @ Vt, ref.svt(A, tau), atol=20 * tol)


def test_svt_everything_below_tau_is_empty(rng):
    A, s = ref.decaying_matrix(rng, 40, 30)
    U, sv, Vt, V = ops.svt(A, float(s[0]) * 1.01, 5)
    assert U.shape == (40, 0) and sv.shape == (0,) and Vt.shape == (0, 30) and V.shape == (30, 13)


def test_torch_cpu_tensors_and_workspace_reuse_across_shapes(rng):
    for shape, dtype in [((60, 50), torch.float64), ((30, 80), torch.float32), ((60, 50), torch.float64)]:
        A = torch.from_numpy(ref.decaying_matrix(rng, *shape, decay=0.6)[0]).to(dtype)
        U, s, Vt, V = ops.truncated_svd(A, 5, power_iters=4)
        assert all(isinstance(t, torch.Tensor) and t.dtype == dtype for t in (U, s, Vt, V))
        exact = torch.linalg.svdvals(A.double())[:5]
        torch.testing.assert_close(s.double(), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda A: ops.truncated_svd(A[0], 2), ValueError, "2-D"),
        (lambda A: ops.truncated_svd(A, 0), ValueError, "rank"),
        (lambda A: ops.truncated_svd(A, 21), ValueError, "rank"),
        (lambda A: ops.truncated_svd(A, 2.5), TypeError, "rank must be an int"),
        (lambda A: ops.truncated_svd(A.astype(np.int32), 2), TypeError, "float32 or float64"),
        (lambda A: ops.truncated_svd(np.where(A > 1, np.nan, A), 2), ValueError, "NaN or Inf"),
        (lambda A: ops.truncated_svd(A, 2, V0=np.zeros((20, 3))), ValueError, "V0 must be"),
        (lambda A: ops.truncated_svd(A, 4, V0=np.zeros((30, 3))), ValueError, "V0 must be"),
        (lambda A: ops.truncated_svd(A, 2, V0=np.zeros((30, 4), np.float32)), TypeError, "dtype"),
        (lambda A: ops.truncated_svd(A, 2, power_iters=0), ValueError, "power_iters"),
        (lambda A: ops.svt(A, -1.0, 3), ValueError, "tau"),
    ],
    ids=[
        "1d", "rank-0", "rank-too-big", "rank-float", "int-dtype", "nan", "V0-rows", "V0-cols",
        "V0-dtype", "power-iters", "svt-negative-tau",
    ],
)
def test_bad_inputs(rng, call, exc, match):
    A = rng.standard_normal((20, 30))
    with pytest.raises(exc, match=match):
        call(A)


def test_core_rejects_wrong_layout(rng):
    from lowrank_sparse import _core

    A = np.asfortranarray(rng.standard_normal((20, 30)))
    with pytest.raises(TypeError, match="A must be C-contiguous"):
        _core.truncated_svd(A, 2, np.zeros((30, 4)), 1)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("tau_between", [2, 7], ids=["k2", "k7-all-of-rank"])
def test_core_svt_keeps_first_rank_like_torch_ops(rng, dtype, tol, tau_between):
    """C++ lrs::svt (binding with rank=) thresholds only the leading `rank` triplets,
    exactly like torch_ops.svt; both equal the full-SVD prox truncated to `rank`."""
    from lowrank_sparse import _core
    from lowrank_sparse.ops import torch_ops

    A, s = ref.decaying_matrix(rng, 70, 90, decay=0.8, dtype=dtype)
    rank, p = 7, 12
    tau = float(s[tau_between - 1] + s[tau_between]) / 2 if tau_between < rank else float(s[rank]) * 0.5
    V0 = np.linalg.qr(rng.standard_normal((90, p)))[0].astype(dtype)
    U, sv, Vt, V, k = _core.svt(A, tau, V0, 6, rank=rank)
    assert U.shape == (70, rank) and sv.shape == (rank,) and Vt.shape == (rank, 90) and V.shape == (90, p)
    k_ref = int(np.sum(s[:rank] > tau))
    assert k == k_ref == min(tau_between, rank)
    assert np.all(sv[k:] == 0) and np.all(sv[:k] > 0)
    Ut, st, Vtt, _ = torch_ops.svt(torch.from_numpy(A), tau, rank, torch.from_numpy(V0), power_iters=6)
    assert st.shape == (k,)
    np.testing.assert_allclose(sv[:k], st.numpy(), rtol=10 * tol, atol=tol)
    # the prox restricted to the top-`rank` subspace, from numpy's full SVD
    Uf, sf, Vtf = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    shrunk = np.maximum(sf[:rank] - tau, 0)
    expect = (Uf[:, :rank] * shrunk) @ Vtf[:rank]
    np.testing.assert_allclose((U * sv) @ Vt, expect, atol=20 * tol)
    np.testing.assert_allclose(((Ut * st) @ Vtt).numpy(), expect, atol=20 * tol)


def test_core_svt_rank_is_checked(rng):
    from lowrank_sparse import _core

    A = rng.standard_normal((20, 30))
    V0 = np.linalg.qr(rng.standard_normal((30, 8)))[0]
    with pytest.raises(ValueError, match="rank"):
        _core.svt(A, 0.1, V0, 1, rank=9)
    with pytest.raises(ValueError, match="rank"):
        _core.svt(A, 0.1, V0, 1, rank=0)
    with pytest.raises(TypeError, match="rank"):
        _core.svt(A, 0.1, V0, 1, rank=2.5)
    with pytest.raises(ValueError, match="rank"):
        _core.truncated_svd(A, -1, V0, 1)


@pytest.mark.parametrize("shape", [pytest.param((300, 1200), id="wide"), pytest.param((1100, 260), id="tall")])
def test_large_wide_and_tall_match_full_svd_f32(rng, shape):
    """Shapes big enough for the QR-of-B^T route to matter (n >> p), float32."""
    m, n = shape
    A, _ = ref.decaying_matrix(rng, m, n, decay=0.85, dtype=np.float32)
    r = 24
    U, s, Vt, V = ops.truncated_svd(A, r, oversample=8, power_iters=5)
    Ut, st, Vtt = torch.linalg.svd(torch.from_numpy(A.astype(np.float64)), full_matrices=False)
    np.testing.assert_allclose(s, st[:r].numpy(), rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(U.T @ U, np.eye(r), atol=2e-5)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(r), atol=2e-5)
    np.testing.assert_allclose(V.T @ V, np.eye(r + 8), atol=2e-5)
    # U diag(s) Vt is a near-best rank-r approximation (Eckart-Young error)
    A64 = A.astype(np.float64)
    err = np.linalg.norm(A64 - (U * s) @ Vt)
    best = float(np.sqrt(np.sum(st[r:].numpy() ** 2)))
    assert err <= best * 1.01


# ---- QR of the tall panels: CholeskyQR2 (default) vs Householder (geqrf + orgqr) ----
# (the variants through the private hook lowrank_sparse._core._Switches)
def _start(rng, n: int, p: int, dtype) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, p)))[0].astype(dtype)


# The same subspace iteration with one step done two ways: the panels' QR by
# CholeskyQR2 or Householder (cholesky_qr), the (p, n) panel B's SVD from its Gram B B^T
# (syevd) or the QR of B^T + gesdd (gram_svd).  ortho: tolerance factor of the
# orthonormality checks (the Gram path's Vt rows are orthogonal to eps s_1^2 / s_i^2).
ALTERNATIVES = [pytest.param("cholesky_qr", 20, id="cholesky_qr"), pytest.param("gram_svd", 50, id="gram_svd")]


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", [pytest.param((300, 1200), id="wide"), pytest.param((1100, 260), id="tall")])
@pytest.mark.parametrize("flag,ortho", ALTERNATIVES)
def test_alternative_step_matches_the_other_and_full_svd(rng, dtype, tol, shape, flag, ortho):
    """Both ways give the same singular values (descending), the same rank-r product and
    the same refined subspace, all close to the full SVD's; the outputs are orthonormal."""
    m, n = shape
    A, _ = ref.decaying_matrix(rng, m, n, decay=0.9, dtype=dtype)
    r, p = 16, 24
    V0 = _start(rng, n, p, dtype)
    from lowrank_sparse import _core

    with _core._Switches(**{flag: True}):
        Ua, sa, Vta, Va = _core.truncated_svd(A, r, V0, 4)
    with _core._Switches(**{flag: False}):
        Ub, sb, Vtb, Vb = _core.truncated_svd(A, r, V0, 4)
    scale = float(sb[0])
    np.testing.assert_allclose(sa, sb, rtol=20 * tol, atol=tol * scale)
    assert np.all(np.diff(sa) <= 0)  # descending
    np.testing.assert_allclose((Ua * sa) @ Vta, (Ub * sb) @ Vtb, atol=50 * tol * scale)
    np.testing.assert_allclose(Va @ Va.T, Vb @ Vb.T, atol=50 * tol)  # same subspace
    for Q in (Ua, Vta.T, Va):
        np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=ortho * tol)
    st = torch.linalg.svd(torch.from_numpy(A.astype(np.float64)), full_matrices=False)[1]
    np.testing.assert_allclose(sa, st[:r].numpy(), rtol=2e-3, atol=tol * scale)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_cholesky_qr_falls_back_on_rank_deficient_panels(rng, dtype, tol):
    """A of exact rank 3 < p: the (m, p) panel A V is singular, its Gram is not
    positive definite and the Householder fallback takes over; the result still has
    orthonormal factors and the exact singular values (zeros beyond rank 3)."""
    m, n, k, r, p = 90, 140, 3, 6, 10
    A = (rng.standard_normal((m, k)) @ rng.standard_normal((k, n))).astype(dtype)
    V0 = _start(rng, n, p, dtype)
    from lowrank_sparse import _core

    with _core._Switches(cholesky_qr=True):
        U, s, Vt, V = _core.truncated_svd(A, r, V0, 2)
    exact = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s[:k], exact[:k], rtol=50 * tol)
    assert np.all(np.abs(s[k:]) <= 100 * tol * exact[0])
    np.testing.assert_allclose(U.T @ U, np.eye(r), atol=50 * tol)
    np.testing.assert_allclose(V.T @ V, np.eye(p), atol=50 * tol)
    np.testing.assert_allclose((U * s) @ Vt, A, atol=100 * tol * exact[0])


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("k", [pytest.param(3, id="rank3"), pytest.param(12, id="rank12")])
def test_gram_svd_falls_back_when_b_is_rank_deficient(rng, dtype, tol, k):
    """A of exact rank k < p: B's trailing singular values are zero, so 1 / s would blow
    up; the Gram path must hand the iteration to the QR path, whose result is exact."""
    m, n, r, p = 90, 140, 6, 16
    A = (rng.standard_normal((m, k)) @ rng.standard_normal((k, n))).astype(dtype)
    V0 = _start(rng, n, p, dtype)
    from lowrank_sparse import _core

    with _core._Switches(gram_svd=True):
        U, s, Vt, V = _core.truncated_svd(A, r, V0, 2)
    exact = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    kk = min(k, r)
    np.testing.assert_allclose(s[:kk], exact[:kk], rtol=50 * tol)
    assert np.all(np.isfinite(V))
    np.testing.assert_allclose(V.T @ V, np.eye(p), atol=50 * tol)
    np.testing.assert_allclose(U.T @ U, np.eye(r), atol=50 * tol)
    if k <= r:
        np.testing.assert_allclose((U * s) @ Vt, A, atol=100 * tol * exact[0])


def test_cholesky_qr_flag_is_checked(rng):
    from lowrank_sparse import _core

    with pytest.raises(TypeError):
        _core._Switches(cholesky_qr="yes")


def test_switches_restore_the_production_path(rng):
    """Outside a with block (and after it, even when it raised) the standalone SVD takes
    its production path: CholeskyQR2 panels, B's SVD by QR + gesdd (bitwise)."""
    from lowrank_sparse import _core

    A, _ = ref.decaying_matrix(rng, 60, 80, decay=0.9, dtype=np.float64)
    V0 = _start(rng, 80, 12, np.float64)
    base = _core.truncated_svd(A, 8, V0, 2)
    with _core._Switches(cholesky_qr=True, gram_svd=False):
        same = _core.truncated_svd(A, 8, V0, 2)
    with pytest.raises(RuntimeError, match="inside"):
        with _core._Switches(gram_svd=True, cholesky_qr=False):
            changed = _core.truncated_svd(A, 8, V0, 2)
            raise RuntimeError("inside")
    after = _core.truncated_svd(A, 8, V0, 2)
    for x, y, z in zip(base, same, after):
        assert np.array_equal(x, y) and np.array_equal(x, z)
    assert not all(np.array_equal(x, y) for x, y in zip(base, changed))
