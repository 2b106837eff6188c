"""The C++ ADMM (lowrank_sparse.solve.native) runs the same iterations as the torch
reference: same iteration count, same histories, same result to float tolerance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lowrank_sparse._validate import initial_subspace, prepare
from lowrank_sparse.solve.native import solve_native
from lowrank_sparse.solve.torch_backend import solve_torch


def variant(**switches):
    """The core's comparison switches (weight_fused, speculate_input, cholesky_qr,
    gram_svd, simd) for the solves inside the with block."""
    from lowrank_sparse import _core

    return _core._Switches(**switches)

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


# A valid raw _core.admm_solve problem on a (4, 6) weight: S only, 3 entries.
def _raw_problem(**kw):
    from lowrank_sparse import _core

    return _core.AdmmProblem(**{"k": 3, "sparse": True, "max_iter": 5, **kw})


def test_native_errors_are_python_exceptions() -> None:
    from lowrank_sparse import _core

    W = np.ones((4, 6))
    _core.admm_solve(_raw_problem(), W)  # valid
    with pytest.raises(TypeError):
        _core.admm_solve(_raw_problem(), W.astype(np.int64))
    bad = np.array(W)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _core.admm_solve(_raw_problem(), bad)
    with pytest.raises(ValueError, match="V0"):
        _core.admm_solve(_raw_problem(rank=2, p=3), W)
    with pytest.raises(ValueError, match="mode gram"):
        _core.admm_solve(_raw_problem(mode=_core.Mode.gram), W)


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
                      "elementwise", "wstep", "total", "lform_gemm_thread"}
    assert all(v >= 0 for v in t.values())
    parts = t["svd"] + t["lform"] + t["project"] + t["elementwise"] + t["wstep"]
    assert parts <= t["total"] * 1.001 + 1e-6
    assert t["svd_products"] + t["svd_qr"] + t["svd_small"] <= t["svd"] * 1.001 + 1e-6


def test_native_rejects_bad_gemm_threads() -> None:
    from lowrank_sparse import _core

    W = np.ones((4, 6))
    with pytest.raises(ValueError, match="iteration settings"):
        _core.admm_solve(_raw_problem(gemm_threads=0), W)


# ---- the restructured weight-mode loop (csrc/admm_weight.cpp) ----
# 130 x 1200: several row chunks, 64-row tiles (the last one partial) and, in float64,
# three column blocks of the L tiles (512, 512, 176), so every blocking edge is crossed.
FUSED_CASES = {
    "unstructured": dict(),
    "row": dict(structure="row"),
    "column": dict(structure="column"),
    "channel": dict(structure="channel", block=3),
    "2:4": dict(structure="2:4"),
    "slices": dict(slices=4),
    "no-sparse": dict(density=0.0),
    "rank-0": dict(rank=0),
    "relaxed-unstructured": dict(relaxed=True, lam_nuclear=3.0, lam_sparse=0.5),
    "relaxed-row": dict(relaxed=True, structure="row", lam_nuclear=3.0, lam_sparse=2.0),
    "relaxed-column": dict(relaxed=True, structure="column", lam_nuclear=3.0, lam_sparse=1.0),
    "relaxed-channel": dict(relaxed=True, structure="channel", block=3, lam_nuclear=3.0,
                            lam_sparse=1.0),
}


@pytest.mark.parametrize("case", list(FUSED_CASES), ids=list(FUSED_CASES))
def test_fused_weight_loop_matches_torch_iterates(case: str) -> None:
    kw = dict(FUSED_CASES[case])
    rank = kw.pop("rank", 12)
    density = kw.pop("density", 0.05)
    g = torch.Generator().manual_seed(5)
    m, n = 130, 1200
    W = torch.randn(m, n, generator=g, dtype=torch.float64) * torch.linspace(2, 0.3, n, dtype=torch.float64)
    W += torch.randn(m, 6, generator=g, dtype=torch.float64) @ torch.randn(6, n, generator=g, dtype=torch.float64)
    pr = prepare(W, rank, density, max_iter=10, tol=1e-12, **kw)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    a = solve_torch(pr.W, pr.spec, V0)
    W_before = pr.W.clone()
    c = solve_native(pr.W, pr.spec, V0, threads=2)
    assert torch.equal(pr.W, W_before)  # W0 is read, never written
    assert a.iterations == c.iterations >= 2  # (rank 0 converges at iteration 2)
    Ma, Mc = a.U @ a.V + a.S, c.U @ c.V + c.S
    assert float((Ma - Mc).norm() / Ma.norm()) < 1e-9
    assert float((a.S - c.S).norm()) <= 1e-9 * max(float(a.S.norm()), 1.0)
    np.testing.assert_allclose(c.primal, a.primal, rtol=1e-7, atol=1e-13)
    np.testing.assert_allclose(c.dual, a.dual, rtol=1e-7, atol=1e-13)
    np.testing.assert_allclose(c.objective, a.objective, rtol=1e-9)
    if not pr.spec.relaxed and density > 0:  # the budget is met exactly
        nz = c.S != 0
        st = kw.get("structure")
        kept = {None: lambda: int(nz.sum()), "row": lambda: int(nz.any(1).sum()),
                "column": lambda: int(nz.any(0).sum()),
                "channel": lambda: int(nz.reshape(m, n // 3, 3).any(2).any(0).sum()),
                "2:4": lambda: int(nz.reshape(m, n // 4, 4).sum(2).max())}[st]()
        assert kept == (2 if st == "2:4" else pr.spec.k)
    # the general loop runs the same iterations
    with variant(weight_fused=False):
        o = solve_native(pr.W, pr.spec, V0, threads=2)
    np.testing.assert_allclose(c.primal, o.primal, rtol=1e-9, atol=1e-14)
    assert float((c.S - o.S).norm()) <= 1e-9 * max(float(o.S.norm()), 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_fused_topk_ties_keep_exactly_k_lowest_indices(dtype: torch.dtype) -> None:
    """Weights with many equal magnitudes: the top-k cut of the fused loop (threshold key
    plus the flat index of the last kept tie) keeps exactly k entries, ties going to the
    lower flat index, like the explicit projection of the general loop and of torch."""
    g = torch.Generator().manual_seed(2)
    m, n = 96, 700  # 67200 entries: the radix-histogram path of the selection
    W = torch.randint(-3, 4, (m, n), generator=g).to(dtype)  # magnitudes 0..3: massive ties
    # rank 0, one iteration: the S-step input is W itself
    pr = prepare(W, 0, 0.1, max_iter=1, tol=1e-12)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    c = solve_native(pr.W, pr.spec, V0, threads=2)
    with variant(weight_fused=False):
        o = solve_native(pr.W, pr.spec, V0, threads=2)
    a = solve_torch(pr.W, pr.spec, V0)
    flat = W.abs().flatten().to(torch.float64).tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))[: pr.spec.k]
    mask = torch.zeros(len(flat), dtype=torch.bool)
    mask[order] = True
    mask = mask.reshape(m, n)
    for res in (c, o, a):
        assert torch.equal(res.S != 0, mask)
    assert torch.equal(c.S, torch.where(mask, W, torch.zeros_like(W)))
    # later iterations (values no longer exact ties) still keep exactly k
    pr3 = prepare(W, 0, 0.1, max_iter=3, tol=1e-12)
    assert int((solve_native(pr3.W, pr3.spec, V0, threads=2).S != 0).sum()) == pr.spec.k


# ---- CholeskyQR2 panels, top-k band inside P3, speculative L-step input ----
def _fused_problem(dtype: torch.dtype = torch.float64, m: int = 130, n: int = 1200, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64) * torch.linspace(2, 0.3, n, dtype=torch.float64)
    W += torch.randn(m, 6, generator=g, dtype=torch.float64) @ torch.randn(6, n, generator=g, dtype=torch.float64)
    return W.to(dtype)


SPEC_CASES = {"unstructured": dict(), "row": dict(structure="row"), "channel": dict(structure="channel", block=3),
              "2:4": dict(structure="2:4"), "slices": dict(slices=4),
              "relaxed": dict(relaxed=True, lam_nuclear=3.0, lam_sparse=0.5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(SPEC_CASES), ids=list(SPEC_CASES))
def test_speculative_input_gives_bitwise_the_same_iterates(case: str, dtype: torch.dtype) -> None:
    """P4 writing the next L-step input (assuming the balanced penalty update) must give
    exactly the iterates of forming it in its own pass: same bits, same histories."""
    W = _fused_problem(dtype)
    # rho0 far from balanced: the first updates rebalance (P0 runs), later ones do not
    pr = prepare(W, 12, 0.05, max_iter=14, tol=1e-12, **SPEC_CASES[case])
    spec = dataclasses.replace(pr.spec, rho0=300.0)
    V0 = initial_subspace(spec, pr.W.dtype, pr.W.device)
    with variant(speculate_input=True):
        a = solve_native(pr.W, spec, V0, threads=2)
    with variant(speculate_input=False):
        b = solve_native(pr.W, spec, V0, threads=2)
    assert b.extra["speculation_hits"] == 0
    steps = np.array(a.rho[1:]) / np.array(a.rho[:-1])
    balanced = int(np.isclose(steps, pr.spec.rho_growth, rtol=1e-12).sum())
    assert a.extra["speculation_hits"] == balanced
    assert 1 <= balanced < len(steps)  # both paths were taken
    for x, y in ((a.U, b.U), (a.V, b.V), (a.S, b.S)):
        assert torch.equal(x, y)
    assert a.primal == b.primal and a.dual == b.dual and a.rho == b.rho


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_topk_band_selection_matches_the_full_selection(dtype: torch.dtype) -> None:
    """Unstructured top-k in the fused loop: most cuts come from the band of candidates
    around the previous threshold; the result equals the general loop's (explicit
    projection over all entries) and torch's, and S keeps exactly k entries."""
    W = _fused_problem(dtype, m=160, n=1500)
    pr = prepare(W, 10, 0.05, max_iter=25, tol=1e-12)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    # B's SVD by the QR path in both loops: its float32 rounding is the smaller one, so
    # the two loops' iterates stay close enough to compare supports (the Gram path has
    # its own test below)
    with variant(gram_svd=False):
        c = solve_native(pr.W, pr.spec, V0, threads=2)
    with variant(weight_fused=False, gram_svd=False):
        o = solve_native(pr.W, pr.spec, V0, threads=2)
    assert c.extra["band_hits"] >= 10 and o.extra["band_hits"] == 0
    assert int((c.S != 0).sum()) == pr.spec.k
    if dtype == torch.float64:
        a = solve_torch(pr.W, pr.spec, V0)
        for ref_ in (o, a):
            assert torch.equal(c.S != 0, ref_.S != 0)
            assert float((c.S - ref_.S).norm()) <= 1e-9 * float(ref_.S.norm())
            np.testing.assert_allclose(c.primal, ref_.primal, rtol=1e-7, atol=1e-13)
    else:  # float32: the two loops round differently; same support up to a few swaps
        assert int(((c.S != 0) != (o.S != 0)).sum()) <= 4
        Mc, Mo = c.U @ c.V + c.S, o.U @ o.V + o.S
        assert float((Mc - Mo).norm() / Mo.norm()) < 1e-4


def test_topk_band_keeps_ties_by_flat_index() -> None:
    """Eleven entries planted at exactly the k-th largest magnitude, six of them kept.
    Rank 0 and rho fixed at 1 make iteration 2's S-step input equal W bit for bit, so
    its cut comes from the band around iteration 1's threshold: it must keep exactly k
    entries, the tied ones with the lowest flat indices (an index-order oracle)."""
    g = torch.Generator().manual_seed(4)
    m, n = 96, 800
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    pr = prepare(W, 0, 0.1, max_iter=2, tol=1e-12)
    k = pr.spec.k
    order = torch.argsort(W.abs().flatten(), descending=True)
    tied = order[k - 6 : k + 5]  # ranks k-5 .. k+5 (1-based)
    flat = W.flatten().clone()
    flat[tied] = torch.sign(flat[tied]) * flat[order[k - 1]].abs()
    W = flat.reshape(m, n)
    pr = prepare(W, 0, 0.1, max_iter=2, tol=1e-12)
    spec = dataclasses.replace(pr.spec, rho_growth=1.0)  # rho stays 1: exact arithmetic
    V0 = initial_subspace(spec, pr.W.dtype, pr.W.device)
    c = solve_native(pr.W, spec, V0, threads=2)
    with variant(weight_fused=False):
        o = solve_native(pr.W, spec, V0, threads=2)
    assert c.iterations == 2 and c.extra["band_hits"] == 1  # iteration 2's cut: the band
    mags = W.abs().flatten().tolist()
    keep = sorted(range(m * n), key=lambda i: (-mags[i], i))[:k]
    mask = torch.zeros(m * n, dtype=torch.bool)
    mask[keep] = True
    assert torch.equal(c.S != 0, mask.reshape(m, n))
    assert torch.equal(c.S, o.S)
    kept_ties = sorted(int(i) for i in tied if mask[int(i)])
    assert kept_ties == sorted(int(i) for i in tied)[:6]


def test_cholesky_qr_and_householder_give_the_same_iterates() -> None:
    W = _fused_problem(torch.float64)
    pr = prepare(W, 12, 0.05, max_iter=10, tol=1e-12)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    with variant(cholesky_qr=True):
        c = solve_native(pr.W, pr.spec, V0, threads=2)
    with variant(cholesky_qr=False):
        h = solve_native(pr.W, pr.spec, V0, threads=2)
    assert c.extra["qr_fallbacks"] == 0
    Mc, Mh = c.U @ c.V + c.S, h.U @ h.V + h.S
    assert float((Mc - Mh).norm() / Mh.norm()) < 1e-9
    np.testing.assert_allclose(c.primal, h.primal, rtol=1e-7, atol=1e-13)


def test_gram_svd_and_qr_path_give_the_same_iterates() -> None:
    """B's SVD from its Gram (default) or from the QR of B^T + gesdd: the same ADMM
    iterates to rounding (float64), with no fallback on a full-rank weight."""
    W = _fused_problem(torch.float64)
    pr = prepare(W, 12, 0.05, max_iter=10, tol=1e-12)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    with variant(gram_svd=True):
        g = solve_native(pr.W, pr.spec, V0, threads=2)
    with variant(gram_svd=False):
        q = solve_native(pr.W, pr.spec, V0, threads=2)
    assert g.extra["gram_fallbacks"] == 0 and q.extra["gram_fallbacks"] == 0
    Mg, Mq = g.U @ g.V + g.S, q.U @ q.V + q.S
    assert float((Mg - Mq).norm() / Mq.norm()) < 1e-9
    np.testing.assert_allclose(g.primal, q.primal, rtol=1e-7, atol=1e-13)


@pytest.mark.parametrize("weight_fused", [True, False], ids=["fused", "general"])
def test_gram_svd_reaches_the_qr_paths_error_in_float32(weight_fused: bool) -> None:
    """float32, 25 iterations: the Gram path rounds more in near-tied singular directions,
    so the trajectories drift apart, but the final error ||W - L - S|| / ||W|| (computed
    here in float64) is the QR path's to 1e-4 and S keeps exactly k entries."""
    W = _fused_problem(torch.float32, m=160, n=1500)
    pr = prepare(W, 10, 0.05, max_iter=25, tol=1e-12)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    Wd = W.double()
    err = {}
    for gs in (True, False):
        with variant(gram_svd=gs, weight_fused=weight_fused):
            x = solve_native(pr.W, pr.spec, V0, threads=2)
        assert int((x.S != 0).sum()) == pr.spec.k and x.extra["gram_fallbacks"] == 0
        err[gs] = float((Wd - (x.U.double() @ x.V.double() + x.S.double())).norm() / Wd.norm())
    assert abs(err[True] - err[False]) <= 1e-4 * err[False]


def test_cholesky_qr_fallback_on_a_rank_deficient_weight() -> None:
    """W of rank 2 plus 1e-10 noise, fitted with rank 5: the SVD's panels A V have
    condition ~1e10, beyond CholeskyQR2 in float64; the Householder fallback takes over
    and the iterates still match torch's."""
    g = torch.Generator().manual_seed(8)
    W = torch.randn(60, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 90, generator=g, dtype=torch.float64)
    W += 1e-10 * torch.randn(60, 90, generator=g, dtype=torch.float64)
    pr = prepare(W, 5, 0.0, max_iter=4, tol=1e-12)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    c = solve_native(pr.W, pr.spec, V0, threads=2)
    a = solve_torch(pr.W, pr.spec, V0)
    assert c.extra["qr_fallbacks"] >= 1
    assert c.extra["gram_fallbacks"] >= 1  # B's singular values span ~1e10: QR path
    assert a.iterations == c.iterations
    Ma, Mc = a.U @ a.V + a.S, c.U @ c.V + c.S
    assert float((Ma - Mc).norm() / Ma.norm()) < 1e-9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(SPEC_CASES), ids=list(SPEC_CASES))
def test_simd_row_kernels_give_bitwise_the_baseline_iterates(case: str, dtype: torch.dtype) -> None:
    """The fused loop's AVX2 + FMA row kernels (picked at run time) and the baseline-ISA
    ones must round identically (no contracted multiply-adds): same bits, same histories."""
    from lowrank_sparse import _core

    if not _core.simd_available():
        pytest.skip("this CPU has no AVX2 + FMA")
    W = _fused_problem(dtype)
    pr = prepare(W, 12, 0.05, max_iter=12, tol=1e-12, **SPEC_CASES[case])
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    a = solve_native(pr.W, pr.spec, V0, threads=2)
    assert a.extra["simd_kernels"]  # production: the AVX2 + FMA kernels
    with variant(simd=False):
        b = solve_native(pr.W, pr.spec, V0, threads=2)
    assert not b.extra["simd_kernels"]
    for x, y in ((a.U, b.U), (a.V, b.V), (a.S, b.S)):
        assert torch.equal(x, y)
    assert a.primal == b.primal and a.dual == b.dual and a.objective == b.objective


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["unstructured", "row", "channel", "2:4", "slices"])
def test_refit_in_the_core_matches_the_python_refit(case: str, dtype: torch.dtype, tol: float) -> None:
    """refit=True: the fused loop's epilogue sets S_J = (W0 - L)_J on S's support (in its
    L tiles) -- the same as solve.refit.refit_weight_ applied to the unrefitted
    result: same factors, same support, same values and errors to rounding."""
    from lowrank_sparse.solve.refit import refit_weight_

    W = _fused_problem(dtype)
    density = 0.3 if case == "2:4" else 0.05
    pr = prepare(W, 12, density, max_iter=15, tol=1e-12, **SPEC_CASES[case])
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    a = solve_native(pr.W, pr.spec, V0, threads=2, refit=True)
    b = solve_native(pr.W, pr.spec, V0, threads=2, refit=False)
    assert "refit_errors" not in b.extra
    assert torch.equal(a.U, b.U) and torch.equal(a.V, b.V)
    S = b.S.clone()
    before, after = refit_weight_(pr.W, b.U, b.V, S)
    assert torch.equal(a.S != 0, S != 0)
    assert float((a.S - S).abs().max()) <= tol * float(S.abs().max())
    got_before, got_after = a.extra["refit_errors"]
    assert got_before == pytest.approx(before, rel=tol) and got_after == pytest.approx(after, rel=tol)
    assert got_after <= got_before
