"""Parameter / MAC counts against hand formulas and torch's own parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.nn.geometry import conv_output_hw
from lowrank_sparse.nn.counts import dense_flops, dense_macs, dense_params, model_flops, model_macs, model_params
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, groups=4, bias=False), nn.Conv2d(4, 6, (2, 5), stride=(2, 3), dilation=2)],
    ids=["k3", "grouped", "asym"],
)
def test_dense_conv_counts(conv: nn.Conv2d) -> None:
    assert dense_params(conv) == sum(p.numel() for p in conv.parameters())
    x = torch.zeros(1, conv.in_channels, 17, 19)
    Ho, Wo = conv(x).shape[2:]
    assert conv_output_hw((17, 19), conv.kernel_size, conv.stride, conv.padding, conv.dilation) == (Ho, Wo)
    kh, kw = conv.kernel_size
    assert dense_macs(conv, (17, 19)) == Ho * Wo * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def test_dense_linear_counts() -> None:
    lin = nn.Linear(7, 5)
    assert dense_params(lin) == 40 and dense_macs(lin) == 35
    with pytest.raises(TypeError):
        dense_params(nn.ReLU())
    with pytest.raises(ValueError, match="input_hw"):
        dense_macs(nn.Conv2d(1, 1, 1))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(self.bn(self.c1(x)))).flatten(1))


def test_model_counts_dense_hand_formula() -> None:
    net = Tiny().train()
    assert model_params(net) == sum(p.numel() for p in net.parameters())
    expected = 8 * 8 * 8 * 3 * 9 + 4 * 4 * 8 * 4 * 9 + 128 * 10
    assert model_macs(net, (3, 8, 8)) == expected
    per = model_macs(net, (3, 8, 8), per_layer=True)
    assert per == {"c1": 8 * 8 * 8 * 27, "c2": 16 * 8 * 36, "fc": 1280}
    assert net.training and net.bn.training  # flags restored


def test_model_counts_with_pairs(tgen: torch.Generator) -> None:
    net = Tiny()
    r = 2
    S = torch.randn(8, 72, generator=tgen) * (torch.rand(8, 72, generator=tgen) < 0.2)
    dec = Decomposition(torch.randn(8, r, generator=tgen), torch.randn(r, 72, generator=tgen), S,
                        parse_structure("unstructured"), SolveInfo())  # fmt: skip
    c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    net.c2 = LowRankSparseConv2d.from_conv(c2, dec)
    Sf = torch.randn(10, 128, generator=tgen) * (torch.rand(10, 128, generator=tgen) < 0.1)
    decf = Decomposition(torch.randn(10, 3, generator=tgen), torch.randn(3, 128, generator=tgen), Sf,
                         parse_structure("unstructured"), SolveInfo())  # fmt: skip
    net.fc = LowRankSparseLinear.from_decomposition(decf, bias=torch.zeros(10))
    nnz, nnzf = int(S.ne(0).sum()), int(Sf.ne(0).sum())
    c2_params = r * (8 + 72) + nnz + 8
    fc_params = 3 * (10 + 128) + nnzf + 10
    assert model_params(net) == 8 * 27 + 8 + 16 + c2_params + fc_params
    assert model_params(net) == sum(p.numel() for p in net.parameters())
    c2_macs = 4 * 4 * (r * 72 + 8 * r + nnz)
    assert model_macs(net, (3, 8, 8)) == 8 * 8 * 8 * 27 + c2_macs + 3 * 128 + 10 * 3 + nnzf


def test_linear_on_token_sequences() -> None:
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    # per sample: 5 tokens, each through both layers
    assert model_macs(net, (5, 6)) == 5 * (24 + 8)


def test_flops_functions_are_deprecated_aliases() -> None:
    net = Tiny()
    with pytest.warns(DeprecationWarning, match=r"model_flops\(\) is deprecated; use model_macs\(\)"):
        assert model_flops(net, (3, 8, 8)) == model_macs(net, (3, 8, 8))
    with pytest.warns(DeprecationWarning, match=r"dense_flops\(\) is deprecated; use dense_macs\(\)"):
        assert dense_flops(nn.Linear(7, 5)) == 35
