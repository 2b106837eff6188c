"""Tests for lowrank_sparse.calibrate.layers: compressible layers and the keep_first_last rule
(the same for compress() and budget.allocate)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lowrank_sparse.budget import Budget, LayerSpec, allocate
from lowrank_sparse.calibrate import calibrate, find_layers, first_last_protected
from lowrank_sparse.compress import compress


def test_grouped_convs_are_skipped_with_reason():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1, groups=2), nn.Conv2d(8, 8, 1))
    layers, skipped = find_layers(model)
    assert [n for n, _ in layers] == ["2"]
    assert "depthwise" in skipped["0"] and "grouped" in skipped["1"]
    cal = calibrate(model, torch.randn(2, 4, 5, 5))
    assert set(cal.layers) == {"2"} and "groups=4" in cal.skipped["0"]


# --------------------------------------------------------------------- keep_first_last


def _mlp(k: int) -> nn.Sequential:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for i in range(k):
        mods += [nn.Linear(8, 8), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def _expected(names: list[str]) -> set[str]:
    """The documented rule, written out: first and last, from 3 layers on."""
    return {names[0], names[-1]} if len(names) >= 3 else set()


@pytest.mark.parametrize("k", [1, 2, 3, 5], ids=lambda k: f"{k}-layers")
def test_first_last_protected_rule(k):
    names = [f"l{i}" for i in range(k)]
    got = first_last_protected(names, True)
    assert set(got) == _expected(names)
    if got:
        assert got[names[0]] == "first" and got[names[-1]] == "last"
    assert first_last_protected(names, False) == {}


@pytest.mark.parametrize("k", [1, 2, 3, 5], ids=lambda k: f"{k}-layers")
def test_compress_and_allocate_protect_the_same_layers(k, tgen):
    model = _mlp(k)
    x = torch.randn(40, 8, generator=tgen)
    names = [n for n, _ in find_layers(model)[0]]
    _, rep = compress(model, x, rank=2, method="rank_only", keep_first_last=True, progress=False)
    by_compress = {n for n, why in rep.skipped.items() if "keep_first_last" in why}
    specs = [LayerSpec(name=n, weight=m.weight.detach()) for n, m in find_layers(model)[0]]
    alloc = allocate(specs, Budget(params=0.9), "uniform", mode="rank_only", keep_first_last=True)
    by_allocate = {la.name for la in alloc.layers if la.source == "first/last"}
    assert by_compress == by_allocate == _expected(names)
