"""C++ sparsity operators (lowrank_sparse.ops on numpy / CPU tensors) vs tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lowrank_sparse.ops as ops
from lowrank_sparse import _core
from lowrank_sparse.structure import Structure

import reference as ref  # tests/ is on sys.path (pytest rootdir conftest, prepend mode)

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
GROUPS = [
    pytest.param("row", 1, id="row"),
    pytest.param("column", 1, id="column"),
    pytest.param("channel", 3, id="channel-3"),
    pytest.param("channel", 9, id="channel-9"),
]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    old = ops.get_num_threads()
    ops.set_num_threads(request.param)
    yield request.param
    ops.set_num_threads(old)


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- exact oracles


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (33, 17), (300, 400)], ids=["7", "33x17", "300x400"])
def test_soft_threshold_matches_reference(rng, dtype, shape, threads):
    x = rng.standard_normal(shape).astype(dtype)
    x0 = x.copy()
    for tau in (0.0, 0.3, 5.0):
        assert_same(ops.soft_threshold(x, tau), ref.soft_threshold(x, tau))
    assert_same(x, x0)  # input untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n", [10, 1000, 70_001, 300_000], ids=["n10", "n1000", "n70001-radix", "n300000-radix"]
)
def test_topk_matches_reference(rng, dtype, n, threads):
    x = rng.standard_normal(n).astype(dtype)
    for k in sorted({0, 1, n // 3, n - 1, n}):
        out = ops.topk_project(x, k)
        assert np.count_nonzero(out) == k
        assert_same(out, ref.topk_project(x, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1000, 200_000], ids=["small", "radix"])
def test_topk_planted_ties_lower_index_wins(rng, dtype, n, threads):
    # Few distinct magnitudes with both signs: ties everywhere, including at the threshold.
    x = (rng.integers(1, 6, n) * rng.choice([-1, 1], n)).astype(dtype)
    for k in (1, n // 7, n // 2, n - 3):
        out = ops.topk_project(x, k)
        assert_same(out, ref.topk_project(x, k))
        # among entries with the threshold magnitude the kept ones precede the dropped ones
        t = np.abs(out[out != 0]).min()
        tied = np.flatnonzero(np.abs(x) == t)
        kept = out[tied] != 0
        assert np.all(np.diff(kept.astype(int)) <= 0)


def test_topk_2d_counts_flat_entries(rng):
    x = rng.standard_normal((40, 50))
    assert_same(ops.topk_project(x, 123), ref.topk_project(x, 123))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,block", GROUPS)
def test_group_topk_matches_reference(rng, dtype, kind, block, threads):
    x = rng.standard_normal((60, 90)).astype(dtype)
    s = Structure(kind, block=block) if kind == "channel" else kind
    G = Structure(kind, block=block).num_groups(60, 90)
    for k in sorted({0, 1, G // 2, G}):
        assert_same(ops.group_topk_project(x, k, s), ref.group_topk_project(x, k, kind, block))


@pytest.mark.parametrize("kind,block", GROUPS)
def test_group_topk_planted_ties(rng, kind, block):
    # integer-valued groups with identical norms: the lower group index must win
    x = rng.integers(-2, 3, (12, 36)).astype(np.float64)
    if kind == "row":
        x[5] = x[2]
        x[9] = -x[2]
    elif kind == "column":
        x[:, 7] = x[:, 3]
        x[:, 11] = x[:, 3][::-1]
    else:
        x[:, 2 * block : 3 * block] = x[:, 0:block]
        x[:, 3 * block : 4 * block] = -x[:, 0:block]
    G = Structure(kind, block=block).num_groups(12, 36)
    norms = ref.group_norms(x, kind, block)
    for k in range(G + 1):
        out = ops.group_topk_project(x, k, kind, block=block)
        assert_same(out, ref.group_topk_project(x, k, kind, block))
    assert len(np.unique(norms)) < G  # ties really are present


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,block", GROUPS)
def test_group_soft_threshold_matches_reference(rng, dtype, kind, block, threads):
    x = rng.standard_normal((50, 72)).astype(dtype)
    norms = ref.group_norms(x, kind, block)
    for tau in (0.0, float(np.median(norms)), float(norms.max()) * 2):
        out = ops.group_soft_threshold(x, tau, kind, block=block)
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(out, ref.group_soft_threshold(x, tau, kind, block), rtol=tol, atol=tol)
    # groups at or below tau are exactly zero
    tau = float(np.median(norms))
    out = ops.group_soft_threshold(x, tau, kind, block=block)
    gid = ref.group_ids(kind, 50, 72, block)
    assert np.all(out[norms[gid] <= tau] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nm", [(1, 2), (2, 4), (3, 8), (4, 16), (5, 80)], ids=lambda t: f"{t[0]}:{t[1]}")
def test_nm_matches_reference(rng, dtype, nm, threads):
    n, m = nm
    x = rng.standard_normal((23, 4 * m)).astype(dtype)
    x[0, :m] = 1.0  # a window of ties: the first n columns must win
    out = ops.nm_project(x, n, m)
    assert_same(out, ref.nm_project(x, n, m))
    assert np.all(np.count_nonzero(out.reshape(23, 4, m), axis=2) == n)
    assert np.all(out[0, :n] == 1.0) and np.all(out[0, n:m] == 0)


@pytest.mark.parametrize(
    "structure,k",
    [("unstructured", 100), ("row", 5), ("column", 7), ("channel", 3), ("2:4", 999)],
)
def test_project_dispatch(rng, structure, k):
    x = rng.standard_normal((16, 24))
    out = ops.project(x, k, structure, block=4)
    if structure == "2:4":
        expect = ref.nm_project(x, 2, 4)
    elif structure == "unstructured":
        expect = ref.topk_project(x, k)
    else:
        expect = ref.group_topk_project(x, k, structure, 4)
    assert_same(out, expect)


def test_torch_cpu_tensors_round_trip(tgen):
    x = torch.randn(30, 40, generator=tgen)
    out = ops.topk_project(x, 50)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert_same(out.numpy(), ref.topk_project(x.numpy(), 50))
    # non-contiguous and requires_grad inputs work, and are not modified
    xt = x.t().requires_grad_(True)
    out2 = ops.project(xt, 3, "row")
    assert_same(out2.numpy(), ref.group_topk_project(x.t().contiguous().numpy(), 3, "row"))


def test_core_out_argument_in_place(rng):
    x = rng.standard_normal((64, 64))
    expect = ref.topk_project(x, 200)
    res = _core.topk_project(x, 200, out=x)
    assert res is x or np.shares_memory(res, x)
    assert_same(x, expect)
    y = rng.standard_normal((8, 12)).astype(np.float32)
    buf = np.empty_like(y)
    _core.nm_project(y, 2, 4, out=buf)
    assert_same(buf, ref.nm_project(y, 2, 4))


def test_thread_count_settable():
    old = ops.get_num_threads()
    try:
        ops.set_num_threads(3)
        assert ops.get_num_threads() == 3
        ops.set_num_threads(0)
        assert ops.get_num_threads() >= 1
    finally:
        ops.set_num_threads(old)


# ---------------------------------------------------------------- properties

finite = st.floats(-100, 100, allow_nan=False, width=64)


@given(arrays(np.float64, st.integers(1, 60), elements=finite), st.floats(0, 50))
def test_soft_threshold_is_the_prox(x, tau):
    """p = prox(x) minimises 0.5||p - x||^2 + tau||p||_1: no perturbation does better."""
    p = ops.soft_threshold(x, tau)

    def obj(z):
        return 0.5 * np.sum((z - x) ** 2) + tau * np.sum(np.abs(z))

    base = obj(p)
    for d in np.eye(len(x))[:10]:
        for h in (1e-3, -1e-3, 0.5, -0.5):
            assert obj(p + h * d) >= base - 1e-9


@given(
    arrays(np.float64, 40, elements=finite), arrays(np.float64, 40, elements=finite), st.floats(0, 20)
)
def test_soft_threshold_nonexpansive(x, y, tau):
    d = np.linalg.norm(ops.soft_threshold(x, tau) - ops.soft_threshold(y, tau))
    assert d <= np.linalg.norm(x - y) + 1e-9


@given(arrays(np.float64, st.integers(1, 200), elements=finite), st.data())
def test_topk_keeps_k_and_no_dropped_beats_kept(x, data):
    k = data.draw(st.integers(0, len(x)))
    out = ops.topk_project(x, k)
    kept = np.flatnonzero(out != 0)
    kept_idx = ref.topk_order(np.abs(x))[:k]
    assert set(kept.tolist()) <= set(kept_idx.tolist())  # zeros of x may be "kept" as 0
    assert np.all(out[kept_idx] == x[kept_idx])
    dropped = np.setdiff1d(np.arange(len(x)), kept_idx)
    if k and len(dropped):
        assert np.abs(x[dropped]).max() <= np.abs(x[kept_idx]).min()


@given(
    arrays(np.float64, (6, 12), elements=finite),
    st.sampled_from([("row", 1), ("column", 1), ("channel", 3), ("channel", 4)]),
    st.data(),
)
def test_group_topk_properties(x, kb, data):
    kind, block = kb
    G = Structure(kind, block=block).num_groups(6, 12)
    k = data.draw(st.integers(0, G))
    out = ops.group_topk_project(x, k, kind, block=block)
    norms = ref.group_norms(x, kind, block)
    gid = ref.group_ids(kind, 6, 12, block)
    kept = np.array([np.array_equal(out[gid == g], x[gid == g]) for g in range(G)])
    zero = np.array([np.all(out[gid == g] == 0) for g in range(G)])
    assert np.all(kept | zero)
    kept_groups = ref.topk_order(norms)[:k]
    assert np.all(kept[kept_groups])
    others = np.setdiff1d(np.arange(G), kept_groups)
    assert np.all(zero[others])
    if k and len(others):
        assert norms[others].max() <= norms[kept_groups].min()


@given(
    arrays(np.float64, (5, 16), elements=finite),
    st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8)]),
)
def test_nm_pattern_valid_and_optimal(x, nm):
    n, m = nm
    out = ops.nm_project(x, n, m)
    w_out = out.reshape(5, -1, m)
    w_x = x.reshape(5, -1, m)
    support = ref.nm_project(x, n, m).reshape(5, -1, m) != 0
    assert np.all(np.count_nonzero(w_out, axis=2) <= n)
    # kept entries are copied exactly, and the kept energy per window is the best possible
    assert np.all((w_out == 0) | (w_out == w_x))
    best = -np.sort(-np.abs(w_x), axis=2)[:, :, :n].sum(axis=2)
    np.testing.assert_allclose(np.abs(w_out).sum(axis=2), best, rtol=1e-12, atol=0)
    assert np.array_equal(w_out != 0, support & (w_x != 0))


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x: ops.topk_project(x.astype(np.int64), 3), TypeError, "float32 or float64"),
        (lambda x: ops.topk_project(x, -1), ValueError, "0 <= k"),
        (lambda x: ops.topk_project(x, x.size + 1), ValueError, "0 <= k"),
        (lambda x: ops.soft_threshold(x, -0.1), ValueError, "tau"),
        (lambda x: ops.soft_threshold(x, float("nan")), ValueError, "tau"),
        (lambda x: ops.group_topk_project(x[0], 1, "row"), ValueError, "2-D"),
        (lambda x: ops.group_topk_project(x, 9, "row"), ValueError, "0 <= k"),
        (lambda x: ops.group_topk_project(x, 1, "channel", block=5), ValueError, "multiple"),
        (lambda x: ops.group_soft_threshold(x, 1.0, "2:4"), ValueError, "N:M"),
        (lambda x: ops.nm_project(x, 2, 5), ValueError, "divisible"),
        (lambda x: ops.nm_project(x, 4, 4), ValueError, "N < M"),
        (lambda x: ops.project(x, 1, "diagonal"), ValueError, "unknown structure"),
        (lambda x: ops.topk_project([1.0, 2.0], 1), TypeError, "numpy array or a torch tensor"),
        (lambda x: ops.topk_project(torch.ones(4, dtype=torch.int32), 1), TypeError, "float32"),
    ],
    ids=[
        "int-dtype", "k-negative", "k-too-big", "tau-negative", "tau-nan", "not-2d",
        "groups-k-too-big", "channel-block", "group-st-nm", "nm-not-dividing", "nm-n-eq-m",
        "unknown-structure", "list-input", "int-tensor",
    ],
)
def test_bad_inputs(rng, call, exc, match):
    x = rng.standard_normal((8, 12))
    with pytest.raises(exc, match=match):
        call(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "fn",
    [
        lambda x: ops.topk_project(x, 3),
        lambda x: ops.soft_threshold(x, 0.1),
        lambda x: ops.group_topk_project(x, 1, "column"),
        lambda x: ops.nm_project(x, 2, 4),
    ],
    ids=["topk", "soft", "group-topk", "nm"],
)
def test_non_finite_rejected(rng, bad, fn):
    x = rng.standard_normal((8, 12))
    x[3, 5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(x)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x: _core.topk_project(x.astype(np.float16), 1), TypeError, "x must be a float32"),
        (lambda x: _core.topk_project(np.asfortranarray(x), 1), TypeError, "C-contiguous"),
        (lambda x: _core.topk_project(x, 1, out=np.empty((2, 2))), ValueError, "same shape"),
        (lambda x: _core.topk_project(x, 1, out=np.empty(x.shape, np.float32)), TypeError, "dtype"),
        (lambda x: _core.project(x, 1, 7), TypeError, "Structure"),
        (lambda x: _core.topk_project(np.where(x > 0, np.nan, x), 1), ValueError, "NaN"),
    ],
    ids=["f16", "fortran", "out-shape", "out-dtype", "int-structure", "nan"],
)
def test_core_boundary_checks(rng, call, exc, match):
    x = rng.standard_normal((8, 12))
    with pytest.raises(exc, match=match):
        call(x)
