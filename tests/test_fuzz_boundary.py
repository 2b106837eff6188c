"""The C++ boundary through the public API (lowrank_sparse.decompose and
lowrank_sparse.ops), fuzzed with bad and unusual inputs.

Bad input (NaN/Inf, integer / half / complex dtypes, wrong ndim or shapes, rank,
density, k, tau or N:M out of range) must give a ValueError/TypeError whose message
names the argument; valid input in an unusual layout (transposed, negative strides,
Fortran order, sliced) or in float64 must give exactly what the contiguous input
gives, and match the plain numpy references of tests/reference.py.  The riskiest
calls also run once in a child process, to show that none of them crashes it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_sparse as lrs
import reference as ref  # tests/reference.py: plain numpy oracles
from lowrank_sparse import ops

#: Derandomized (the same examples on every run), sized to a few seconds per test.
FUZZ = settings(max_examples=50, deadline=2000, derandomize=True, database=None)


def names(exc: BaseException, arg: str) -> bool:
    """Whether the message of ``exc`` names ``arg`` as a word (``x``, ``A``, ``V0``...)."""
    return re.search(rf"(?<![\w.]){re.escape(arg)}(?![\w])", str(exc)) is not None


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Op:
    """One public operator: how to call it on x, the argument's name in messages,
    whether it needs cols % 4 == 0, and a float64 numpy reference (None: compared only
    to the contiguous call)."""

    name: str
    call: Callable[[object], object]
    arg: str = "x"
    cols4: bool = False
    reference: Callable[[np.ndarray], np.ndarray] | None = None


def _sv(out: object) -> np.ndarray:
    return np.asarray(out[1], dtype=np.float64)


OPS = [
    Op("soft_threshold", lambda x: ops.soft_threshold(x, 0.3), reference=lambda a: ref.soft_threshold(a, 0.3)),
    Op("topk_project", lambda x: ops.topk_project(x, 3), reference=lambda a: ref.topk_project(a, 3)),
    Op("group_soft_threshold", lambda x: ops.group_soft_threshold(x, 0.3, "row"),
       reference=lambda a: ref.group_soft_threshold(a, 0.3, "row")),
    Op("group_topk_project", lambda x: ops.group_topk_project(x, 1, "column"),
       reference=lambda a: ref.group_topk_project(a, 1, "column")),
    Op("nm_project", lambda x: ops.nm_project(x, 2, 4), cols4=True, reference=lambda a: ref.nm_project(a, 2, 4)),
    Op("project", lambda x: ops.project(x, 1, "row"), reference=lambda a: ref.group_topk_project(a, 1, "row")),
    Op("truncated_svd", lambda x: ops.truncated_svd(x, 1), arg="A"),
    Op("svt", lambda x: ops.svt(x, 0.1, 1), arg="A"),
]  # fmt: skip
OP_NAMES = [op.name for op in OPS]

LAYOUTS = ("contiguous", "transposed", "reversed", "sliced", "fortran")


def _matrix(seed: int, m: int, n: int, dtype: np.dtype, layout: str) -> np.ndarray:
    """A random (m, n) matrix of ``dtype`` in the given memory layout (values distinct,
    so top-k orders have no ties)."""
    rng = np.random.default_rng(seed)
    base = rng.permutation(np.arange(1, 2 * m * n + 1, dtype=np.float64)) / (m * n)
    base = (base * np.where(rng.random(base.size) < 0.5, -1, 1)).astype(dtype)
    if layout == "contiguous":
        return base[: m * n].reshape(m, n)
    if layout == "transposed":
        return base[: m * n].reshape(n, m).T
    if layout == "reversed":
        return base[: m * n].reshape(m, n)[::-1]
    if layout == "sliced":
        return base.reshape(m, 2 * n)[:, ::2]
    return np.asfortranarray(base[: m * n].reshape(m, n))


@st.composite
def matrices(draw, cols4: bool = False, dtypes=(np.float32, np.float64)) -> np.ndarray:
    m = draw(st.integers(1, 6), label="m")
    n = draw(st.sampled_from([4, 8]) if cols4 else st.integers(3, 9), label="n")
    dtype = np.dtype(draw(st.sampled_from(dtypes), label="dtype"))
    layout = draw(st.sampled_from(LAYOUTS), label="layout")
    return _matrix(draw(st.integers(0, 2**16), label="seed"), m, n, dtype, layout)


def _as(kind: str, a: np.ndarray) -> object:
    """numpy as it is, or a torch tensor viewing the same memory (strides kept)."""
    return a if kind == "numpy" else torch.from_numpy(a) if a.strides[0] >= 0 and a.strides[1] >= 0 else torch.from_numpy(a.copy())


def _np(out: object) -> np.ndarray:
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def _first(out: object) -> object:
    return out[0] if isinstance(out, tuple) else out


# ----------------------------------------------------------------------------- ops: bad input


@FUZZ
@given(op=st.sampled_from(OPS), data=st.data(),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), kind=st.sampled_from(["numpy", "torch"]))  # fmt: skip
def test_ops_refuse_nan_and_inf(op: Op, data, bad: float, kind: str) -> None:
    a = data.draw(matrices(cols4=op.cols4), label="x")  # a fresh array in its drawn layout
    i = data.draw(st.integers(0, a.size - 1), label="where")
    a.flat[i] = bad  # writes through the view
    before = a.copy()
    with pytest.raises(ValueError) as info:
        op.call(_as(kind, a))
    assert names(info.value, op.arg) and "NaN or Inf" in str(info.value)
    np.testing.assert_array_equal(a, before)


_BAD_DTYPES_NP = [np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64]
_BAD_DTYPES_T = [torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]


@FUZZ
@given(op=st.sampled_from(OPS), kind=st.sampled_from(["numpy", "torch"]), data=st.data())
def test_ops_refuse_unsupported_dtypes(op: Op, kind: str, data) -> None:
    a = data.draw(matrices(cols4=op.cols4, dtypes=(np.float64,)), label="x")
    if kind == "numpy":
        x: object = np.ascontiguousarray(a).astype(data.draw(st.sampled_from(_BAD_DTYPES_NP), label="dtype"))
    else:
        x = torch.from_numpy(np.ascontiguousarray(a)).to(data.draw(st.sampled_from(_BAD_DTYPES_T), label="dtype"))
    with pytest.raises(TypeError) as info:
        op.call(x)
    assert names(info.value, op.arg)


@pytest.mark.parametrize("op", OPS, ids=OP_NAMES)
@pytest.mark.parametrize("x", [[[1.0, 2.0]], 3.0, "x", None], ids=["list", "float", "str", "none"])
def test_ops_refuse_non_arrays(op: Op, x: object) -> None:
    with pytest.raises(TypeError) as info:
        op.call(x)
    assert names(info.value, op.arg)


@pytest.mark.parametrize("op", [op for op in OPS if op.name not in ("soft_threshold", "topk_project")], ids=str)
@pytest.mark.parametrize("shape", [(8,), (2, 2, 4), ()], ids=["1d", "3d", "0d"])
def test_matrix_ops_refuse_other_ndims(op: Op, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError) as info:
        op.call(np.ones(shape, np.float32))
    assert names(info.value, op.arg) and "2-D" in str(info.value)


@pytest.mark.parametrize("op", OPS, ids=OP_NAMES)
@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0)], ids=["zero-rows", "zero-cols", "empty"])
def test_ops_on_empty_input_work_or_refuse_clearly(op: Op, shape: tuple[int, int]) -> None:
    x = np.zeros(shape, np.float32)
    try:
        out = op.call(x)
    except ValueError as e:  # e.g. rank 1 > min(m, n) = 0, or k > 0 entries / groups
        assert names(e, op.arg) or names(e, "rank") or names(e, "k")
        return
    assert _np(_first(out)).shape[0] == shape[0]


# ----------------------------------------------------------------------------- ops: out of range


@FUZZ
@given(x=matrices(), k=st.one_of(st.integers(-10**6, -1), st.integers(49, 10**9)))
def test_topk_k_out_of_range(x: np.ndarray, k: int) -> None:
    if k < 0 or k > x.size:
        with pytest.raises(ValueError) as info:
            ops.topk_project(x, k)
        assert names(info.value, "k")


@FUZZ
@given(x=matrices(), k=st.integers(1, 100), structure=st.sampled_from(["row", "column"]))
def test_group_topk_k_beyond_the_groups(x: np.ndarray, k: int, structure: str) -> None:
    groups = x.shape[0] if structure == "row" else x.shape[1]
    if k <= groups:
        out = ops.group_topk_project(x, k, structure)
        np.testing.assert_array_equal(out, ref.group_topk_project(np.ascontiguousarray(x), k, structure).astype(x.dtype))
        return
    with pytest.raises(ValueError) as info:
        ops.group_topk_project(x, k, structure)
    assert names(info.value, "k")


@FUZZ
@given(x=matrices(), tau=st.one_of(st.floats(max_value=-1e-300), st.sampled_from([np.nan, np.inf, -np.inf])),
       which=st.sampled_from(["soft_threshold", "group_soft_threshold", "svt"]))  # fmt: skip
def test_tau_out_of_range(x: np.ndarray, tau: float, which: str) -> None:
    call = {"soft_threshold": lambda: ops.soft_threshold(x, tau),
            "group_soft_threshold": lambda: ops.group_soft_threshold(x, tau, "row"),
            "svt": lambda: ops.svt(x, tau, 1)}[which]  # fmt: skip
    with pytest.raises(ValueError) as info:
        call()
    assert names(info.value, "tau")


@FUZZ
@given(x=matrices(), rank=st.one_of(st.integers(-5, 0), st.integers(7, 10**6)))
def test_svd_rank_out_of_range(x: np.ndarray, rank: int) -> None:
    if 1 <= rank <= min(x.shape):
        return
    for fn in (lambda: ops.truncated_svd(x, rank), lambda: ops.svt(x, 0.1, rank)):
        with pytest.raises(ValueError) as info:
            fn()
        assert names(info.value, "rank")


@FUZZ
@given(data=st.data(), n=st.integers(-3, 9), m=st.integers(-3, 9))
def test_nm_patterns_that_are_invalid_or_do_not_divide(data, n: int, m: int) -> None:
    x = data.draw(matrices(), label="x")
    valid = 1 <= n < m and x.shape[1] % m == 0
    if valid:
        np.testing.assert_array_equal(ops.nm_project(x, n, m), ref.nm_project(np.ascontiguousarray(x), n, m))
        return
    with pytest.raises(ValueError) as info:
        ops.nm_project(x, n, m)
    msg = str(info.value)
    assert f"{n}:{m}" in msg or "N:M" in msg or f"M={m}" in msg


@pytest.mark.parametrize("V0", [np.zeros((7, 3), np.float32), np.zeros((8, 1), np.float32), np.zeros((8, 7), np.float32),
                                np.zeros(8, np.float32)], ids=["rows", "too-few-cols", "too-many-cols", "1d"])  # fmt: skip
def test_svd_warm_start_of_wrong_shape(V0: np.ndarray) -> None:
    A = _matrix(0, 6, 8, np.dtype(np.float32), "contiguous")
    with pytest.raises(ValueError) as info:
        ops.truncated_svd(A, 2, V0=V0)
    assert names(info.value, "V0")


def test_svd_warm_start_of_other_dtype() -> None:
    A = _matrix(0, 6, 8, np.dtype(np.float32), "contiguous")
    with pytest.raises(TypeError) as info:
        ops.truncated_svd(A, 2, V0=np.linalg.qr(np.ones((8, 3)) + np.eye(8, 3))[0])
    assert names(info.value, "V0")


# ----------------------------------------------------------------------------- ops: unusual valid input


@FUZZ
@given(op=st.sampled_from(OPS), data=st.data(), kind=st.sampled_from(["numpy", "torch"]))
def test_ops_layouts_and_float64_give_the_contiguous_result(op: Op, data, kind: str) -> None:
    a = data.draw(matrices(cols4=op.cols4), label="x")
    if op.name == "topk_project" and a.size < 3:
        return
    before = a.copy()
    out = op.call(_as(kind, a))
    same = op.call(_as(kind, np.ascontiguousarray(a)))
    np.testing.assert_array_equal(a, before)  # inputs are never modified
    for o, s in zip(out if isinstance(out, tuple) else (out,), same if isinstance(same, tuple) else (same,)):
        assert isinstance(o, torch.Tensor if kind == "torch" else np.ndarray)
        assert _np(o).dtype == a.dtype
        np.testing.assert_array_equal(_np(o), _np(s))
    if op.reference is not None:
        tol = 1e-6 if a.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(_np(out), op.reference(a.astype(np.float64)), rtol=tol, atol=tol)
    elif op.name == "truncated_svd":
        tol = 1e-4 if a.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(_sv(out), np.linalg.svd(a.astype(np.float64), compute_uv=False)[:1], rtol=tol)


# ----------------------------------------------------------------------------- decompose


def _W(seed: int = 0, m: int = 8, n: int = 12) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


def _nan_at(t: torch.Tensor, i: int, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[i % t.numel()] = value
    return t


@st.composite
def bad_decompose_calls(draw) -> tuple[str, type[Exception], dict]:
    """(argument named in the message, exception type, keyword arguments of decompose)."""
    m, n = draw(st.integers(2, 8), label="m"), draw(st.sampled_from([4, 8, 12]), label="n")
    W = _W(draw(st.integers(0, 99), label="seed"), m, n)
    ok = {"W": W, "rank": 1, "density": 0.1}
    bad = draw(st.sampled_from([
        "W-nonfinite", "W-dtype", "W-ndim", "W-empty", "rank-range", "rank-type", "density-range",
        "density-type", "structure-nm", "X-rows", "X-nonfinite", "X-dtype", "gram-shape", "gram-nonfinite",
        "gram-asymmetric", "bias-shape", "bias-nonfinite", "block"]), label="bad")  # fmt: skip
    value = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]), label="value")
    where = draw(st.integers(0, 10**4), label="where")
    if bad == "W-nonfinite":
        return "W", ValueError, {**ok, "W": _nan_at(W, where, value)}
    if bad == "W-dtype":
        dt = draw(st.sampled_from([torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]), label="dtype")
        return "W", TypeError, {**ok, "W": W.to(dt)}
    if bad == "W-ndim":
        return "W", ValueError, {**ok, "W": W.reshape(-1) if where % 2 else W.reshape(1, m, n)}
    if bad == "W-empty":
        return "W", ValueError, {**ok, "W": W[:0] if where % 2 else W[:, :0]}
    if bad == "rank-range":
        r = draw(st.one_of(st.integers(-10**6, -1), st.integers(min(m, n) + 1, 10**6)), label="rank")
        return "rank", ValueError, {**ok, "rank": r}
    if bad == "rank-type":
        return "rank", TypeError, {**ok, "rank": draw(st.sampled_from([1.5, "1", None, True, 2.0]), label="rank")}
    if bad == "density-range":
        d = draw(st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(float("nan"))), label="d")
        return "density", ValueError, {**ok, "density": d}
    if bad == "density-type":
        return "density", TypeError, {**ok, "density": draw(st.sampled_from(["0.1", None, True, [0.1]]), label="d")}
    if bad == "structure-nm":
        mm = draw(st.sampled_from([5, 7, 16, 24]), label="M")
        return "structure", ValueError, {**ok, "structure": f"1:{mm}"}
    if bad == "block":
        return "block", (ValueError, TypeError), {**ok, "structure": "channel", "block": draw(
            st.sampled_from([0, -1, 1.5]), label="block")}
    samples = draw(st.integers(1, 20), label="N")
    X, G, b = torch.randn(n, samples), torch.eye(n), torch.randn(m)
    cases = {
        "X-rows": ("X", ValueError, {"X": torch.randn(n + 1 + where % 3, samples)}),
        "X-nonfinite": ("X", ValueError, {"X": _nan_at(X, where, value)}),
        "X-dtype": ("X", TypeError, {"X": X.to(torch.int64)}),
        "gram-shape": ("gram", ValueError, {"gram": torch.eye(n + 1)}),
        "gram-nonfinite": ("gram", ValueError, {"gram": _nan_at(G, where, value)}),
        "gram-asymmetric": ("gram", ValueError, {"gram": G + torch.triu(torch.ones(n, n), 1)}),
        "bias-shape": ("bias", ValueError, {"bias": torch.randn(m + 1) if where % 2 else b[:, None]}),
        "bias-nonfinite": ("bias", ValueError, {"bias": _nan_at(b, where, value)}),
    }
    arg, exc, extra = cases[bad]
    return arg, exc, {**ok, **extra}


@settings(FUZZ, max_examples=150)  # 18 kinds of bad argument x 3 backends; each call fails fast
@given(case=bad_decompose_calls(), backend=st.sampled_from(["auto", "native", "torch"]))
def test_decompose_names_the_bad_argument(case, backend: str) -> None:
    arg, exc, kwargs = case
    with pytest.raises(exc) as info:
        lrs.decompose(**kwargs, backend=backend, max_iter=3)
    assert names(info.value, arg), f"{arg!r} not named in {info.value!r}"


@FUZZ
@given(seed=st.integers(0, 2**16), layout=st.sampled_from(LAYOUTS), kind=st.sampled_from(["numpy", "torch"]),
       dtype=st.sampled_from([np.float32, np.float64]), structure=st.sampled_from(["unstructured", "row", "2:4"]))  # fmt: skip
def test_decompose_layouts_give_the_contiguous_result(seed: int, layout: str, kind: str, dtype, structure) -> None:
    a = _matrix(seed, 6, 8, np.dtype(dtype), layout)
    args = {"rank": 2, "density": 0.25, "structure": structure, "max_iter": 5}
    r = lrs.decompose(_as(kind, a), **args)
    c = lrs.decompose(_as(kind, np.ascontiguousarray(a)), **args)
    for name in ("U", "V", "S"):
        got, want = _np(getattr(r, name)), _np(getattr(c, name))
        assert got.dtype == a.dtype and np.isfinite(got).all()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_decompose_half_precision_is_solved_in_float32(dtype: torch.dtype) -> None:
    W = _W().to(dtype)
    r = lrs.decompose(W, rank=2, density=0.1, max_iter=10)
    f = lrs.decompose(W.to(torch.float32), rank=2, density=0.1, max_iter=10)
    assert r.U.dtype == dtype
    for name in ("U", "V", "S"):
        assert torch.equal(getattr(r, name), getattr(f, name).to(dtype))


def test_decompose_calibration_inputs_in_other_layouts() -> None:
    W = _W()
    X = torch.randn(30, 12, generator=torch.Generator().manual_seed(1))
    args = {"rank": 2, "density": 0.1, "activation": "relu", "max_iter": 5}
    a = lrs.decompose(W, X=X.t(), **args)  # (n, N) view of an (N, n) tensor
    b = lrs.decompose(W, X=X.t().contiguous(), **args)
    c = lrs.decompose(W, X=X.t().double(), **args)  # float64 X with float32 W: solved in W's dtype
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S)
    assert c.U.dtype == torch.float32 and torch.isfinite(c.U).all()


# ----------------------------------------------------------------------------- no crash


_RISKY = r"""
import numpy as np, torch, lowrank_sparse as lrs
from lowrank_sparse import ops
x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
calls = [
    lambda: ops.soft_threshold(x[::-1, ::-3], 0.1),
    lambda: ops.topk_project(np.asfortranarray(x), 48),
    lambda: ops.topk_project(np.zeros((0, 5), np.float32), 0),
    lambda: ops.group_soft_threshold(np.zeros((0, 8), np.float32), 0.1, "row"),
    lambda: ops.group_topk_project(np.zeros((0, 8), np.float32), 0, "row"),
    lambda: ops.group_topk_project(x.T.copy(), 2, "channel", block=3),
    lambda: ops.nm_project(np.zeros((3, 0), np.float32), 2, 4),
    lambda: ops.nm_project(x.astype(np.float64)[:, ::-1], 3, 4),
    lambda: ops.truncated_svd(np.zeros((6, 8), np.float32), 2),
    lambda: ops.truncated_svd(x, 2, V0=np.zeros((8, 3), np.float32)),
    lambda: ops.truncated_svd(np.full((6, 8), 3e38, np.float32), 2),
    lambda: ops.svt(np.full((6, 8), 3e38, np.float32), 0.0, 6),
    lambda: ops.svt(np.full((6, 8), 1e-45, np.float32), 0.0, 6),
    lambda: ops.truncated_svd(np.full((4, 4), 1e308), 4),
    lambda: ops.truncated_svd(np.ones((1, 1), np.float32), 1),
    lambda: ops.soft_threshold(np.full((3, 3), np.nan, np.float32), 0.1),
    lambda: lrs.decompose(torch.full((8, 12), 1e38), rank=2, density=0.1, max_iter=5),
    lambda: lrs.decompose(torch.full((8, 12), 1e-42), rank=2, density=0.1, max_iter=5),
    lambda: lrs.decompose(torch.randn(8, 12).t(), rank=8, density=0.9, max_iter=5),
    lambda: lrs.decompose(torch.randn(1, 1), rank=1, density=0.0, max_iter=5),
    lambda: lrs.decompose(torch.randn(4, 8), rank=0, density=0.5, structure="2:4", max_iter=5),
    lambda: lrs.decompose(torch.randn(4, 8), rank=2, density=0.1, X=torch.zeros(8, 3), activation="relu", max_iter=5),
    lambda: lrs.decompose(torch.randn(4, 8), rank=2, density=0.1, gram=torch.zeros(8, 8), max_iter=5),
    lambda: lrs.decompose(torch.randn(4, 8), rank=2, density=0.1, X=torch.full((8, 3), 1e30), activation="gelu", max_iter=5),
    lambda: lrs.decompose(torch.randn(4, 8), rank=2, density=0.1, X=torch.randn(8, 5)[:, ::2], activation="tanh", max_iter=5),
]
for i, call in enumerate(calls):
    try:
        call()
        print(i, "ok", flush=True)
    except Exception as e:  # any refusal is fine here; a crash is not
        print(i, type(e).__name__, flush=True)
print("survived", len(calls), flush=True)
"""


def test_riskiest_calls_do_not_crash_the_process() -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_RISKY)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"child died with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"survived {len(lines) - 1}" and len(lines) > 20, proc.stdout


# ----------------------------------------------------------------------------- known gaps


def _W4(seed: int = 0) -> torch.Tensor:
    return _W(seed, 4, 8)


#: Finite inputs whose products overflow inside the solvers:
#: name -> (call, argument a refusal must name, what happens today).
_HUGE = {
    "truncated_svd-f32": (lambda: ops.truncated_svd(np.full((6, 8), 3e38, np.float32), 2), "A",
                          "RuntimeError('lrs: LAPACK gesdd failed (info=-4)')"),
    "svt-f32": (lambda: ops.svt(np.full((6, 8), 3e38, np.float32), 0.1, 2), "A",
                "RuntimeError('lrs: LAPACK gesdd failed (info=-4)')"),
    "truncated_svd-f64": (lambda: ops.truncated_svd(np.full((4, 4), 1e308), 4), "A",
                          "RuntimeError('lrs: LAPACK gesdd failed (info=-4)')"),
    "decompose-W": (lambda: lrs.decompose(torch.full((8, 12), 1e38), rank=2, density=0.1, max_iter=5), "W",
                    "RuntimeError('lrs: LAPACK gesdd failed (info=-4)')"),
    "decompose-X-native": (lambda: lrs.decompose(_W4(), rank=2, density=0.1, X=torch.full((8, 3), 1e20), max_iter=5),
                           "X", "ValueError('gram contains NaN or Inf'): names gram, which the caller did not pass"),
    "decompose-X-torch": (lambda: lrs.decompose(_W4(), rank=2, density=0.1, X=torch.full((8, 3), 1e20), max_iter=5,
                                                backend="torch"),
                          "X", "torch.linalg.LinAlgError from linalg.eigh (error code 7)"),
    "decompose-X-gelu": (lambda: lrs.decompose(_W4(), rank=2, density=0.1, X=torch.full((8, 3), 1e30),
                                               activation="gelu", max_iter=5),
                         "X", "RuntimeError('lrs admm: syevd failed (info=7)')"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(_HUGE))
def test_huge_finite_values(case: str, request) -> None:
    call, arg, today = _HUGE[case]
    try:
        out = call()
    except ValueError as e:
        assert names(e, arg), str(e)
        return
    first = out.U if isinstance(out, lrs.Decomposition) else _first(out)
    assert np.isfinite(_np(first)).all()


def test_non_finite_warm_start_is_named() -> None:
    A = _matrix(0, 6, 8, np.dtype(np.float32), "contiguous")
    with pytest.raises(ValueError) as info:
        ops.truncated_svd(A, 2, V0=np.full((8, 3), np.nan, np.float32))
    assert names(info.value, "V0")


def test_tau_of_wrong_type_is_named() -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        ops.soft_threshold(np.ones((2, 2), np.float32), "a")
    assert names(info.value, "tau")


def test_nm_counts_must_be_ints() -> None:
    with pytest.raises(TypeError) as info:
        ops.nm_project(np.ones((2, 4), np.float32), 1.7, 4)
    assert names(info.value, "n")


@pytest.mark.parametrize("scale", [1e-12, 1e12], ids=["tiny", "large"])
def test_large_but_safe_values_are_solved_scale_equivariantly(scale: float) -> None:
    """The magnitude check refuses only what overflows: a weight scaled by 1e+-12 (its
    squares far from float64's range) decomposes to the scaled decomposition."""
    W = _W(3, 12, 16).double()
    a = lrs.decompose(W, rank=2, density=0.1, max_iter=20, tol=1e-12)
    b = lrs.decompose(W * scale, rank=2, density=0.1, max_iter=20, tol=1e-12)
    La, Lb = a.U @ a.V + a.S, b.U @ b.V + b.S
    np.testing.assert_allclose(_np(Lb) / scale, _np(La), rtol=1e-6, atol=1e-9 * float(W.abs().max()))
