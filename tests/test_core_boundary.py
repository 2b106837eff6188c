"""The C++ core's Python boundary (csrc/bindings): the one array check behind every
binding, the typed enums and problem, the translation of LAPACK failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_sparse import _core
from lowrank_sparse._validate import ACTIVATIONS, initial_subspace, prepare
from lowrank_sparse.errors import LapackError, LayoutError
from lowrank_sparse.solve.activations import zstep as torch_zstep
from lowrank_sparse.solve.native import core_problem, solve_native
from lowrank_sparse.structure import KINDS


def _bindings() -> dict:
    """name: (binding, valid keyword arguments, {array argument: checks that apply})."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 12))
    A = rng.standard_normal((20, 30))
    V = np.linalg.qr(rng.standard_normal((30, 6)))[0]
    W = rng.standard_normal((6, 8))
    X = rng.standard_normal((8, 20))
    G = X @ X.T / 20
    V0 = np.linalg.qr(rng.standard_normal((8, 3)))[0].reshape(1, 8, 3)
    y = rng.standard_normal(10)
    Xq = rng.standard_normal((10, 4)).astype(np.float32)
    C = rng.standard_normal((2, 4, 4)).astype(np.float32)
    codes = rng.integers(0, 4, (10, 2)).astype(np.uint16)
    row = _core.Structure(kind=_core.StructureKind.row)
    gram = _core.AdmmProblem(mode=_core.Mode.gram, k=2, sparse=True, max_iter=2)
    nonlin = _core.AdmmProblem(mode=_core.Mode.nonlinear, activation=_core.Activation.relu, rank=2,
                               p=3, k=2, sparse=True, max_iter=2)
    full, anyshape, nofinite = {"type", "ndim", "dtype", "layout", "finite"}, {"type", "dtype", "layout", "finite"}, {"type", "ndim", "dtype", "layout"}
    return {
        "soft_threshold": (_core.soft_threshold, dict(x=x, tau=0.1), {"x": anyshape}),
        "topk_project": (_core.topk_project, dict(x=x, k=3, out=np.empty_like(x)),
                         {"x": anyshape, "out": {"type", "ndim", "dtype", "layout"}}),
        "group_soft_threshold": (_core.group_soft_threshold, dict(x=x, tau=0.1, structure=row), {"x": full}),
        "group_topk_project": (_core.group_topk_project, dict(x=x, k=2, structure=row), {"x": full}),
        "nm_project": (_core.nm_project, dict(x=x, n=2, m=4), {"x": full}),
        "project": (_core.project, dict(x=x, k=2, structure=row), {"x": full}),
        "truncated_svd": (_core.truncated_svd, dict(A=A, rank=3, V=V), {"A": full, "V": full}),
        "svt": (_core.svt, dict(A=A, tau=0.1, V=V), {"A": full, "V": full}),
        "admm_solve-gram": (_core.admm_solve, dict(problem=gram, W0=W, gram=G), {"W0": full, "gram": full}),
        "admm_solve-nonlinear": (_core.admm_solve, dict(problem=nonlin, W0=W, X=X, bias=W[:, 0].copy(), V0=V0),
                                 {"W0": full, "X": full, "bias": full, "V0": full}),
        "zstep": (_core.zstep, dict(y=y, c=y + 1, u0=y.copy(), rho=1.0, activation=_core.Activation.gelu,
                                    slope=0.01, newton_steps=2), {"y": anyshape, "c": anyshape, "u0": anyshape}),
        "aq_encode_beam": (_core.aq_encode_beam, dict(X=Xq, codebooks=C), {"X": full, "codebooks": full}),
        "aq_encode_greedy": (_core.aq_encode_greedy, dict(X=Xq, codebooks=C), {"X": full, "codebooks": full}),
        "aq_decode": (_core.aq_decode, dict(codes=codes, codebooks=C), {"codes": nofinite, "codebooks": full}),
        "aq_ls_update": (_core.aq_ls_update, dict(X=Xq, codes=codes, codebooks=C),
                         {"X": full, "codes": nofinite, "codebooks": full}),
    }


def _spoiled(a: np.ndarray, how: str):
    """a with one mistake: not an array, an extra dimension, an int dtype, a strided
    (non-contiguous) layout of the same shape and values, or a NaN."""
    if how == "type":
        return a.tolist()
    if how == "ndim":
        return a[None]
    if how == "dtype":
        return a.astype(np.int32 if a.dtype != np.int32 else np.int64)
    if how == "layout":
        b = np.stack([a, a], axis=-1)[..., 0]
        assert b.shape == a.shape and not b.flags.c_contiguous
        return b
    b = a.copy()
    b.flat[0] = np.nan
    return b


EXPECTED = {"type": TypeError, "ndim": ValueError, "dtype": TypeError, "layout": LayoutError, "finite": ValueError}
CASES = [(b, arg, how) for b, (_, _, args) in _bindings().items() for arg, hows in args.items() for how in sorted(hows)]


@pytest.mark.parametrize("binding,arg,how", CASES, ids=[f"{b}-{a}-{h}" for b, a, h in CASES])
def test_every_binding_checks_its_arrays_by_name(binding: str, arg: str, how: str) -> None:
    fn, kw, _ = _bindings()[binding]
    fn(**kw)  # the valid call works
    bad = dict(kw, **{arg: _spoiled(kw[arg], how)})
    with pytest.raises(EXPECTED[how], match=rf"^{arg}\b") as e:
        fn(**bad)
    if how == "layout":  # both kinds of error, so that either except clause catches it
        assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    if how == "finite":
        assert "NaN or Inf" in str(e.value)


@pytest.mark.parametrize(
    "enum,names",
    [(_core.Activation, list(ACTIVATIONS)), (_core.Mode, ["weight", "gram", "nonlinear"]),
     (_core.StructureKind, list(KINDS))],
    ids=["activation", "mode", "structure-kind"],
)
def test_enums_carry_the_python_names(enum, names: list[str]) -> None:
    assert sorted(enum.__members__) == sorted(names)
    for name in names:
        assert getattr(enum, name).name == name


def test_problem_fields_round_trip() -> None:
    for act in _core.Activation.__members__.values():
        assert _core.AdmmProblem(activation=act).activation == act
    for mode in _core.Mode.__members__.values():
        assert _core.AdmmProblem(mode=mode).mode == mode
    for kind in _core.StructureKind.__members__.values():
        st = _core.Structure(kind=kind, block=3, nm_n=1, nm_m=3)
        back = _core.AdmmProblem(structure=st).structure
        assert back == st and back.kind == kind and (back.block, back.nm_n, back.nm_m) == (3, 1, 3)
    p = _core.AdmmProblem(rank=4, p=9, tol=1e-7, max_iter=11, relaxed=True)
    assert (p.rank, p.p, p.tol, p.max_iter, p.relaxed) == (4, 9, 1e-7, 11, True)
    with pytest.raises(TypeError):
        _core.AdmmProblem(mode=1)  # integer codes are not members
    with pytest.raises(AttributeError):
        _core.AdmmProblem(speed=3)


@pytest.mark.parametrize(
    "kw",
    [dict(activation="gelu", structure="row"), dict(activation="tanh", structure="2:4"),
     dict(structure="channel", block=3), dict()],
    ids=["gelu-row", "tanh-2:4", "channel", "weight"],
)
def test_native_problem_from_a_spec(kw: dict) -> None:
    """solve_native's typed problem names the spec's mode, activation and structure."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 12, generator=g, dtype=torch.float64)
    extra = dict(X=torch.randn(12, 30, generator=g, dtype=torch.float64)) if "activation" in kw else {}
    spec = prepare(W, 2, 0.2, **kw, **extra).spec
    p = core_problem(spec, 2, False)
    assert p.mode.name == spec.mode and p.activation.name == spec.activation
    assert p.structure.kind.name == spec.structure.kind and p.structure.block == spec.structure.block
    if spec.structure.kind == "nm":
        assert (p.structure.nm_n, p.structure.nm_m) == (spec.structure.n, spec.structure.m)
    assert (p.rank, p.p, p.k, p.sparse, p.gemm_threads) == (spec.rank, spec.p, spec.k, spec.has_sparse, 2)


def test_lapack_failure_is_a_named_error() -> None:
    """Entries near float32's largest value overflow the subspace products to Inf/NaN;
    gesdd refuses the NaN (info = -4): a LapackError naming the routine, not a crash."""
    A = np.full((20, 30), 3e38, dtype=np.float32)
    A[0, 0] = -3e38
    V = np.linalg.qr(np.random.default_rng(0).standard_normal((30, 6)))[0].astype(np.float32)
    with pytest.raises(LapackError, match=r"gesdd.*info=") as e:
        _core.truncated_svd(A, 3, V, 1)
    assert isinstance(e.value, RuntimeError)
    W = torch.full((20, 30), 3e38, dtype=torch.float32)
    W[0, 0] = -3e38
    # (prepare refuses such a W by name; the core below it must still fail cleanly)
    pr = prepare(torch.ones(20, 30), 3, 0.1, max_iter=3)
    V0 = initial_subspace(pr.spec, pr.W.dtype, pr.W.device)
    with pytest.raises(LapackError, match="LAPACK"):
        solve_native(W, pr.spec, V0)
    with pytest.raises(ValueError, match="W has entries too large"):
        prepare(W, 3, 0.1, max_iter=3)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_zstep_float32_matches_torch(name: str) -> None:
    """The typed Z-step binding in float32 against the torch formulas (float64 reference)."""
    rng = np.random.default_rng(1)
    y, c, u0 = (rng.normal(size=300).astype(np.float32) for _ in range(3))
    act = getattr(_core.Activation, name)
    got = _core.zstep(y, c, u0, 1.3, act, 0.05, 4)
    ref = torch_zstep(*(torch.from_numpy(v.astype(np.float64)) for v in (y, c, u0)), 1.3, name, 0.05, 4)
    assert got.dtype == np.float32 and got.shape == (300,)
    atol = 1e-5 if name in ("identity", "relu", "leaky_relu") else 2e-3
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=atol)


def test_stub_lists_exactly_the_module_names() -> None:
    """lowrank_sparse/_core.pyi declares every public name of the built module, and only
    those; each enum lists the members the module has."""
    import ast
    from pathlib import Path

    import lowrank_sparse

    tree = ast.parse((Path(lowrank_sparse.__file__).parent / "_core.pyi").read_text())
    declared = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    declared.pop("Array", None)
    built = {n for n in dir(_core) if not n.startswith("__")}
    assert set(declared) == built
    for enum_name in ("Activation", "Mode", "StructureKind"):
        members = {t.id for a in declared[enum_name].body if isinstance(a, ast.Assign)
                   for t in a.targets if isinstance(t, ast.Name)}
        assert members == set(getattr(_core, enum_name).__members__)
