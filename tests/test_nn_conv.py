"""LowRankSparseConv2d against F.conv2d with the dense kernel (U V + S).view(m, C, kh, kw)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_sparse.nn import LowRankSparseConv2d
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure


def support(kind: str, m: int, C: int, kk: int, g: torch.Generator, density: float = 0.25) -> torch.Tensor:
    n = C * kk
    if kind == "unstructured":
        return torch.rand(m, n, generator=g) < density
    if kind == "row":
        return (torch.rand(m, 1, generator=g) < density).expand(m, n)
    if kind == "column":
        return (torch.rand(1, n, generator=g) < density).expand(m, n)
    if kind == "channel":
        return (torch.rand(1, C, 1, generator=g) < 0.4).expand(m, C, kk).reshape(m, n)
    N, M = map(int, kind.split(":"))
    idx = torch.rand(m, n // M, M, generator=g).argsort(dim=2)[..., :N]
    return torch.zeros(m, n // M, M, dtype=torch.bool).scatter(2, idx, True).reshape(m, n)


def make(conv: nn.Conv2d, rank: int, kind: str, g: torch.Generator, slices: int = 1, empty_s: bool = False) -> Decomposition:
    m, C, kh, kw = conv.weight.shape
    n = C * kh * kw
    U = torch.randn(m, slices * rank, generator=g)
    V = torch.block_diag(*[torch.randn(rank, n // slices, generator=g) for _ in range(slices)])
    S = torch.zeros(m, n) if empty_s else torch.randn(m, n, generator=g) * support(kind, m, C, kh * kw, g)
    st = parse_structure(kind, block=kh * kw)
    return Decomposition(U, V, S, st, SolveInfo(), slices=slices)


def reference(conv: nn.Conv2d, dec: Decomposition, x: torch.Tensor) -> torch.Tensor:
    W = (dec.U @ dec.V + dec.S).view(conv.weight.shape)
    return F.conv2d(x, W, conv.bias, conv.stride, conv.padding, conv.dilation)


GEOMS = {
    "k3s1p1": dict(kernel_size=3, stride=1, padding=1),
    "k1": dict(kernel_size=1),
    "k5s2p2": dict(kernel_size=5, stride=2, padding=2),
    "k3d2p2": dict(kernel_size=3, dilation=2, padding=2),
    "k2x3s2x1p1x0": dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)),
}


@pytest.mark.parametrize("geom", list(GEOMS), ids=list(GEOMS))
@pytest.mark.parametrize("kind", ["unstructured", "row", "column", "channel", "2:4"])
def test_matches_dense_conv(geom: str, kind: str, tgen: torch.Generator) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, bias=True, **GEOMS[geom])
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    if kind == "2:4" and (8 * kk) % 4:
        pytest.skip("n not divisible by 4")
    dec = make(conv, 3, kind, tgen)
    mod = LowRankSparseConv2d.from_conv(conv, dec)
    x = torch.randn(2, 8, 11, 10, generator=tgen)
    torch.testing.assert_close(mod(x), reference(conv, dec, x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mod.to_dense_weight(), dec.U @ dec.V + dec.S, rtol=1e-5, atol=1e-5)
    # hand formulas: params r*(m+n) + nnz + m, MACs H_out*W_out*(r*C*kh*kw + m*r + sparse)
    m, n, r = 6, 8 * kk, 3
    nnz = int(torch.count_nonzero(dec.S))
    assert mod.num_params() == r * (m + n) + nnz + m
    assert sum(t.numel() for t in mod.state_dict().values() if t.is_floating_point()) == mod.num_params()
    Ho, Wo = reference(conv, dec, x).shape[2:]
    assert mod.macs((11, 10)) == Ho * Wo * (r * n + m * r + nnz)
    with pytest.warns(DeprecationWarning, match=r"LowRankSparseConv2d\.flops\(\) is deprecated"):
        assert mod.flops((11, 10)) == mod.macs((11, 10))


@pytest.mark.parametrize("mode", ["unfold", "dense_kernel"])
def test_unstructured_conv_modes(mode: str, tgen: torch.Generator) -> None:
    conv = nn.Conv2d(4, 5, 3, stride=2, padding=1)
    dec = make(conv, 2, "unstructured", tgen)
    mod = LowRankSparseConv2d.from_conv(conv, dec)
    mod.sparse.conv_mode = mode
    x = torch.randn(3, 4, 9, 9, generator=tgen)
    torch.testing.assert_close(mod(x), reference(conv, dec, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("slices", [2, 4])
def test_alds_slices_grouped_conv(slices: int, tgen: torch.Generator) -> None:
    conv = nn.Conv2d(8, 6, 3, padding=1)
    dec = make(conv, 2, "channel", tgen, slices=slices)
    mod = LowRankSparseConv2d.from_conv(conv, dec)
    assert mod.V.shape == (slices * 2, 8 // slices, 3, 3)
    x = torch.randn(2, 8, 7, 7, generator=tgen)
    torch.testing.assert_close(mod(x), reference(conv, dec, x), rtol=1e-4, atol=1e-4)
    assert mod.num_params() == dec.params + 6


def test_rank0_empty_and_unbatched(tgen: torch.Generator) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    dec0 = make(conv, 0, "row", tgen)
    mod0 = LowRankSparseConv2d.from_conv(conv, dec0)
    assert mod0.U is None
    x = torch.randn(3, 6, 6, generator=tgen)
    torch.testing.assert_close(mod0(x), reference(conv, dec0, x[None])[0], rtol=1e-5, atol=1e-5)
    dec_e = make(conv, 2, "row", tgen, empty_s=True)
    mod_e = LowRankSparseConv2d.from_conv(conv, dec_e)
    assert mod_e.sparse is None and mod_e.macs((6, 6)) == 36 * (2 * 27 + 4 * 2)
    torch.testing.assert_close(mod_e(x[None]), reference(conv, dec_e, x[None]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_padding_modes(mode: str, tgen: torch.Generator) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode)
    dec = make(conv, 2, "column", tgen)
    mod = LowRankSparseConv2d.from_conv(conv, dec)
    with torch.no_grad():
        conv.weight.copy_((dec.U @ dec.V + dec.S).view(conv.weight.shape))
    x = torch.randn(2, 3, 8, 8, generator=tgen)
    torch.testing.assert_close(mod(x), conv(x), rtol=1e-4, atol=1e-4)


def test_config_round_trip_and_no_mutation(tgen: torch.Generator) -> None:
    conv = nn.Conv2d(4, 4, 3, padding="same")
    w0 = conv.weight.clone()
    dec = make(conv, 2, "unstructured", tgen)
    mod = LowRankSparseConv2d.from_conv(conv, dec)
    assert torch.equal(conv.weight, w0)
    mod2 = LowRankSparseConv2d.from_config(mod.config(), dict(mod.state_dict()))
    x = torch.randn(1, 4, 5, 5, generator=tgen)
    assert torch.equal(mod(x), mod2(x))


def test_bad_inputs(tgen: torch.Generator) -> None:
    conv_g = nn.Conv2d(4, 4, 3, groups=2)
    dec = Decomposition(torch.zeros(4, 1), torch.zeros(1, 18), torch.zeros(4, 18), parse_structure("row"), SolveInfo())
    with pytest.raises(ValueError, match="groups"):
        LowRankSparseConv2d.from_conv(conv_g, dec)
    with pytest.raises(ValueError, match="does not match"):
        LowRankSparseConv2d.from_conv(nn.Conv2d(3, 4, 3), dec)
    with pytest.raises(TypeError, match="Conv2d"):
        LowRankSparseConv2d.from_conv(nn.Linear(3, 4), dec)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_hw"):
        LowRankSparseConv2d(4, 4, 3).macs()
    with pytest.raises(ValueError, match="slices"):
        LowRankSparseConv2d(6, 4, 3, slices=4)
