"""LowRankSparseLinear against the dense product x @ (U V + S)^T + b."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_sparse.nn import LowRankSparseLinear
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure


def support(kind: str, m: int, n: int, g: torch.Generator, density: float = 0.2) -> torch.Tensor:
    """A boolean support obeying ``kind`` (the hard projection's pattern)."""
    if kind == "unstructured":
        return torch.rand(m, n, generator=g) < density
    if kind == "row":
        return (torch.rand(m, 1, generator=g) < density).expand(m, n)
    if kind in ("column", "channel"):
        return (torch.rand(1, n, generator=g) < density).expand(m, n)
    N, M = map(int, kind.split(":"))
    idx = torch.rand(m, n // M, M, generator=g).argsort(dim=2)[..., :N]
    return torch.zeros(m, n // M, M, dtype=torch.bool).scatter(2, idx, True).reshape(m, n)


def make_dec(m: int, n: int, rank: int, kind: str, g: torch.Generator, slices: int = 1, empty_s: bool = False) -> Decomposition:
    """W = U V + S from random factors and a sparse part projected onto ``kind``."""
    U = torch.randn(m, slices * rank, generator=g)
    if slices == 1:
        V = torch.randn(rank, n, generator=g)
    else:
        V = torch.block_diag(*[torch.randn(rank, n // slices, generator=g) for _ in range(slices)])
    W = torch.randn(m, n, generator=g)
    S = torch.zeros(m, n) if empty_s else W * support(kind, m, n, g)
    return Decomposition(U, V, S, parse_structure(kind), SolveInfo(), slices=slices)


STRUCTS = ["unstructured", "row", "column", "channel", "2:4", "1:8"]


@pytest.mark.parametrize("kind", STRUCTS)
@pytest.mark.parametrize("rank", [0, 1, 5], ids=lambda r: f"r{r}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_dense_product(kind: str, rank: int, bias: bool, tgen: torch.Generator) -> None:
    m, n = 24, 40
    dec = make_dec(m, n, rank, kind, tgen)
    b = torch.randn(m, generator=tgen) if bias else None
    mod = LowRankSparseLinear.from_decomposition(dec, bias=b)
    x = torch.randn(7, n, generator=tgen)
    ref = x @ (dec.U @ dec.V + dec.S).T + (b if bias else 0)
    torch.testing.assert_close(mod(x), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mod.to_dense_weight(), dec.U @ dec.V + dec.S, rtol=1e-5, atol=1e-5)
    # exact count: r*(m+n) + nnz(S) + m, and state_dict holds exactly that many values
    expected = rank * (m + n) + int(torch.count_nonzero(dec.S)) + (m if bias else 0)
    assert mod.num_params() == expected
    assert sum(p.numel() for p in mod.parameters()) == expected
    float_numel = sum(t.numel() for t in mod.state_dict().values() if t.is_floating_point())
    assert float_numel == expected


@pytest.mark.parametrize("slices", [2, 4])
@pytest.mark.parametrize("kind", ["unstructured", "row"])
def test_alds_slices(slices: int, kind: str, tgen: torch.Generator) -> None:
    m, n, j = 16, 32, 3
    dec = make_dec(m, n, j, kind, tgen, slices=slices)
    mod = LowRankSparseLinear.from_decomposition(dec)
    assert mod.V.shape == (slices, j, n // slices)  # zero blocks not stored
    x = torch.randn(2, 3, n, generator=tgen)
    torch.testing.assert_close(mod(x), x @ (dec.U @ dec.V + dec.S).T, rtol=1e-4, atol=1e-4)
    assert mod.num_params() == m * slices * j + j * n + int(torch.count_nonzero(dec.S))
    assert mod.num_params() == dec.params
    assert mod.macs() == j * n + m * slices * j + int(torch.count_nonzero(dec.S))


def test_empty_sparse_and_numpy_input(tgen: torch.Generator) -> None:
    dec = make_dec(10, 12, 3, "row", tgen, empty_s=True)
    dnp = Decomposition(dec.U.numpy(), dec.V.numpy(), dec.S.numpy(), dec.structure, SolveInfo())
    mod = LowRankSparseLinear.from_decomposition(dnp, bias=np.ones(10, dtype=np.float32))
    assert mod.sparse is None and mod.num_index_bytes() == 0
    x = torch.randn(4, 12, generator=tgen)
    torch.testing.assert_close(mod(x), x @ (dec.U @ dec.V).T + 1, rtol=1e-5, atol=1e-5)
    assert mod.macs() == 3 * 22


def test_rank0_and_empty_gives_bias_only(tgen: torch.Generator) -> None:
    dec = make_dec(5, 6, 0, "unstructured", tgen, empty_s=True)
    b = torch.randn(5, generator=tgen)
    mod = LowRankSparseLinear.from_decomposition(dec, bias=b)
    x = torch.randn(3, 6, generator=tgen)
    torch.testing.assert_close(mod(x), b.expand(3, 5))
    assert mod.num_params() == 5 and mod.macs() == 0


def test_flops_hand_formula(tgen: torch.Generator) -> None:
    m, n, r = 30, 20, 4
    dec = make_dec(m, n, r, "row", tgen)
    mod = LowRankSparseLinear.from_decomposition(dec)
    k_rows = int(dec.S.ne(0).any(dim=1).sum())
    assert mod.macs() == r * n + m * r + k_rows * n
    assert mod.num_index_bytes() == 4 * k_rows  # int32 row indices
    with pytest.warns(DeprecationWarning, match=r"LowRankSparseLinear\.flops\(\) is deprecated; use LowRankSparseLinear\.macs\(\)"):
        assert mod.flops() == mod.macs()


def test_does_not_alias_decomposition(tgen: torch.Generator) -> None:
    dec = make_dec(6, 8, 2, "unstructured", tgen)
    U0 = dec.U.clone()
    mod = LowRankSparseLinear.from_decomposition(dec)
    with torch.no_grad():
        mod.U.add_(1.0)
    assert torch.equal(dec.U, U0)


def test_trainable_and_dtype_move(tgen: torch.Generator) -> None:
    dec = make_dec(8, 12, 2, "unstructured", tgen)
    mod = LowRankSparseLinear.from_decomposition(dec, bias=torch.zeros(8))
    x = torch.randn(5, 12, generator=tgen)
    mod(x).square().sum().backward()
    for name, p in mod.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    m64 = mod.to(torch.float64)
    assert m64.sparse.values.dtype == torch.float64 and m64.sparse.col_indices.dtype == torch.int32
    torch.testing.assert_close(m64(x.double()), x.double() @ (dec.U.double() @ dec.V.double() + dec.S.double()).T)


def test_config_round_trip(tgen: torch.Generator) -> None:
    dec = make_dec(12, 16, 2, "2:4", tgen, slices=2)
    mod = LowRankSparseLinear.from_decomposition(dec, bias=torch.ones(12))
    mod2 = LowRankSparseLinear.from_config(mod.config(), dict(mod.state_dict()))
    x = torch.randn(3, 16, generator=tgen)
    assert torch.equal(mod(x), mod2(x))


def test_bad_inputs(tgen: torch.Generator) -> None:
    dec = make_dec(8, 12, 2, "unstructured", tgen)
    with pytest.raises(TypeError, match="Decomposition"):
        LowRankSparseLinear.from_decomposition("not a dec")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bias"):
        LowRankSparseLinear.from_decomposition(dec, bias=torch.zeros(3))
    bad = Decomposition(dec.U[:, :2], torch.randn(2, 12, generator=tgen), dec.S, dec.structure, SolveInfo(), slices=2)
    with pytest.raises(ValueError, match="block-diagonal"):
        LowRankSparseLinear.from_decomposition(bad)
    with pytest.raises(ValueError, match="slices"):
        LowRankSparseLinear(12, 8, slices=5)


def test_torch_compile_matches_eager(tgen: torch.Generator) -> None:
    pytest.importorskip("torch._dynamo")
    dec = make_dec(8, 16, 2, "row", tgen)
    mod = LowRankSparseLinear.from_decomposition(dec)
    x = torch.randn(4, 16, generator=tgen)
    try:
        compiled = torch.compile(mod, backend="eager", fullgraph=True)
        out = compiled(x)
    except Exception as e:  # pragma: no cover - environment without a working dynamo
        pytest.skip(f"torch.compile unavailable: {type(e).__name__}")
    torch.testing.assert_close(out, mod(x))
