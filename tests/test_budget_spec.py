"""Counting formulas, Budget/LayerSpec validation, Allocation output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lowrank_sparse.budget import Budget, LayerSpec, allocate
from lowrank_sparse.budget.spec import layer_flops, layer_macs, layer_params, lowrank_params, sparse_nnz
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure


def _conv_macs(conv: nn.Conv2d, hw: tuple[int, int]) -> int:
    """Hand count: out_ch * (in_ch / groups) * kh * kw per output pixel."""
    kh, kw = conv.kernel_size
    return conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * hw[0] * hw[1]


@pytest.mark.parametrize("c_in,c_out,k,g,r", [(8, 16, 3, 1, 4), (8, 16, 3, 2, 3), (16, 12, 1, 4, 2), (32, 64, 3, 8, 5)],
                         ids=["plain", "g2", "1x1-g4", "g8"])
def test_lowrank_counts_match_module_pair(c_in, c_out, k, g, r):
    hw = (7, 5)
    first = nn.Conv2d(c_in, g * r, k, groups=g, bias=False)
    second = nn.Conv2d(g * r, c_out, 1, bias=False)
    m, n = c_out, c_in * k * k
    hand_params = first.weight.numel() + second.weight.numel()
    assert lowrank_params(m, n, r, g) == hand_params
    hand_macs = _conv_macs(first, hw) + _conv_macs(second, hw)
    assert layer_macs(m, n, r, 0.0, g, out_hw=hw, block=k * k) == hand_macs


def test_params_match_decomposition_record():
    m, n, r, g = 12, 24, 3, 4
    U = torch.zeros(m, g * r)
    V = torch.zeros(g * r, n)
    S = torch.zeros(m, n)
    S[0, :5] = 1.0
    S[3, 7] = 2.0
    dec = Decomposition(U, V, S, parse_structure("unstructured"), SolveInfo(), slices=g)
    assert layer_params(m, n, r, 6 / (m * n), g) == dec.params == r * g * m + r * n + 6


@pytest.mark.parametrize("structure,density,expected", [
    ("unstructured", 0.1, 29), ("row", 0.25, 3 * 24), ("column", 0.5, 12 * 12), ("channel", 0.25, 12 * 3 * 2),
    ("2:4", 0.5, 12 * 24 // 2), ("unstructured", 0.0, 0)], ids=["unstr", "row", "col", "channel", "2:4", "zero"])
def test_sparse_nnz_hand_counts(structure, density, expected):
    # 12 x 24 matrix; channel block 3 -> 8 channels of 36 entries; 0.25 -> 2 channels
    st = parse_structure(structure, block=3)
    assert sparse_nnz(12, 24, density, st) == expected


def test_linear_macs_equal_params():
    assert layer_macs(10, 20, 2, 0.1, structure="unstructured") == 2 * 30 + 20 == layer_params(10, 20, 2, 0.1)


@pytest.mark.parametrize("kw,err", [({}, ValueError), ({"params": 0.0}, ValueError), ({"params": 1.5}, ValueError),
                                    ({"macs": "x"}, TypeError), ({"params": float("nan")}, ValueError)],
                         ids=["none", "zero", "above1", "str", "nan"])
def test_budget_validation(kw, err):
    with pytest.raises(err):
        Budget(**kw)


def test_layerspec_validation():
    w = torch.randn(4, 18)
    with pytest.raises(ValueError, match="out_hw"):
        LayerSpec("c", w, "conv", 9)
    with pytest.raises(ValueError, match="2-D"):
        LayerSpec("c", torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match="block"):
        LayerSpec("c", w, "conv", 4, (2, 2))
    with pytest.raises(ValueError, match="gram"):
        LayerSpec("l", w, gram=torch.eye(3))
    with pytest.raises(TypeError):
        LayerSpec("l", np.zeros((3, 3)))  # type: ignore[arg-type]
    bad = w.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        LayerSpec("l", bad)
    spec = LayerSpec("c", w, "conv", 9, (5, 6))
    assert (spec.in_channels, spec.spatial, spec.dense_macs) == (2, 30, 30 * 72)


def test_table_and_dict(tgen):
    layers = [LayerSpec(f"l{i}", torch.randn(40, 60, generator=tgen)) for i in range(3)]
    a = allocate(layers, Budget(params=0.5), "alds", mode="rank_only", keep_first_last=False)
    text = a.table()
    lines = text.splitlines()
    assert all(f"l{i}" in text for i in range(3))
    assert "pred.err" in lines[0] and f"{a.params_ratio:.4f}" in text
    # columns aligned: every row of the body has the header's length
    assert len({len(ln) for ln in lines[:2 + 3]}) == 1
    d = json.loads(json.dumps(a.to_dict()))
    assert [x["name"] for x in d["layers"]] == ["l0", "l1", "l2"]
    assert sum(x["params"] for x in d["layers"]) == d["params"]
    assert a["l1"].params == layer_params(40, 60, a["l1"].rank, 0.0, a["l1"].slices)


def test_flops_names_are_deprecated_aliases_of_macs(tgen):
    """The old "flops" names mean the same MAC counts and warn, naming the new name."""
    with pytest.warns(DeprecationWarning, match=r"Budget\(flops=\.\.\.\) is deprecated; use Budget\(macs=\.\.\.\)"):
        old = Budget(flops=0.5)
    assert old == Budget(macs=0.5) == Budget(None, 0.5)
    with pytest.warns(DeprecationWarning, match=r"Budget\.flops is deprecated; use Budget\.macs"):
        assert old.flops == 0.5
    with pytest.raises(TypeError, match="both"):
        Budget(macs=0.5, flops=0.5)
    with pytest.warns(DeprecationWarning, match=r"layer_flops\(\) is deprecated; use layer_macs\(\)"):
        assert layer_flops(12, 18, 2, 0.1, out_hw=(3, 4)) == 12 * (2 * 30 + 22)
    w = torch.randn(6, 18, generator=tgen)
    spec = LayerSpec("c", w, "conv", 9, (5, 6))
    with pytest.warns(DeprecationWarning, match=r"LayerSpec\.dense_flops is deprecated"):
        assert spec.dense_flops == 30 * 6 * 18
    with pytest.warns(DeprecationWarning, match=r"LayerSpec\.flops is deprecated"):
        assert spec.flops(2, 0.0) == 30 * 2 * (6 + 18)
    layers = [LayerSpec(f"l{i}", torch.randn(40, 60, generator=tgen)) for i in range(3)]
    new = allocate(layers, Budget(macs=0.5), "uniform", mode="rank_only", keep_first_last=False,
                   total_macs=10_000)
    with pytest.warns(DeprecationWarning, match=r"allocate\(total_flops=\.\.\.\) is deprecated"):
        again = allocate(layers, Budget(macs=0.5), "uniform", mode="rank_only", keep_first_last=False,
                         total_flops=10_000)
    assert [(x.rank, x.macs) for x in again.layers] == [(x.rank, x.macs) for x in new.layers]
    assert (again.macs, again.total_macs) == (new.macs, 10_000)
    for obj, old_name, new_name in ((new, "flops", "macs"), (new, "total_flops", "total_macs"),
                                    (new, "flops_ratio", "macs_ratio"), (new.layers[0], "flops", "macs")):
        with pytest.warns(DeprecationWarning, match=rf"\.{old_name} is deprecated; use \w+\.{new_name}"):
            assert getattr(obj, old_name) == getattr(obj, new_name)
    with pytest.raises(TypeError, match="both"):
        allocate(layers, Budget(macs=0.5), total_macs=1, total_flops=1)


def test_allocation_output_says_macs(tgen):
    layers = [LayerSpec(f"l{i}", torch.randn(40, 60, generator=tgen)) for i in range(3)]
    a = allocate(layers, Budget(params=0.6, macs=0.5), "alds", mode="rank_only", keep_first_last=False)
    d = a.to_dict()
    assert d["target"] == {"params": 0.6, "macs": 0.5} and d["macs"] == sum(x["macs"] for x in d["layers"])
    assert d["macs_ratio"] == d["macs"] / d["total_macs"] and "flops" not in json.dumps(d)
    text = a.table()
    assert "MACs" in text.splitlines()[0] and "flops" not in text.lower()


@pytest.mark.parametrize("scope", ["whole", "", "Layers"], ids=["word", "empty", "case"])
def test_budget_scope_is_validated(scope):
    with pytest.raises(ValueError, match="scope"):
        Budget(params=0.5, scope=scope)


def test_budget_scope_in_dict_only_when_not_model():
    assert "scope" not in Budget(params=0.5).as_dict()
    assert Budget(params=0.5, scope="layers").as_dict() == {"params": 0.5, "macs": None, "scope": "layers"}
    assert Budget(params=0.5) != Budget(params=0.5, scope="layers")  # a checkpoint with the other scope is refused
