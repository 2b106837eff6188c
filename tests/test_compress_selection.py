"""Tests for lowrank_sparse.compress.selection: include / exclude / filter_fn /
keep_first_last decide which layers compress() replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lowrank_sparse.compress import compress, select_layers


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 5 * 5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3),
    ).eval()


_PREDICATES = {
    "linear-only": lambda name, mod: isinstance(mod, nn.Linear),
    "conv-only": lambda name, mod: isinstance(mod, nn.Conv2d),
    "wide-outputs": lambda name, mod: mod.weight.shape[0] >= 16,
    "by-name": lambda name, mod: name in ("3", "10"),
}


@pytest.mark.parametrize("which", list(_PREDICATES), ids=list(_PREDICATES))
def test_filter_fn_selects_exactly_the_layers_it_accepts(which, tgen):
    model = _model()
    fn = _PREDICATES[which]
    compressible = ["0", "3", "6", "8", "10"]  # "2" is depthwise: never compressible
    expected = [n for n in compressible if fn(n, model.get_submodule(n))]
    selected, skipped = select_layers(model, filter_fn=fn, keep_first_last=False)
    assert [n for n, _ in selected] == expected
    assert {n for n, why in skipped.items() if why == "rejected by filter_fn"} == set(compressible) - set(expected)
    x = torch.randn(10, 2, 5, 5, generator=tgen)
    _, rep = compress(model, x, rank=2, method="rank_only", filter_fn=fn, keep_first_last=False, progress=False)
    assert [r.name for r in rep.layers] == expected


def test_include_exclude_and_keep_first_last():
    model = _model()
    sel, skipped = select_layers(model, include=["6", "8", "1*"], exclude="8")
    assert [n for n, _ in sel] == ["6"]
    assert skipped["0"] == "not matched by include" and skipped["8"] == "matched by exclude"
    assert skipped["10"] == "last layer kept (keep_first_last=True)"
    assert "depthwise" in skipped["2"]
    with pytest.raises(ValueError, match="no layer left to compress"):
        select_layers(model, filter_fn=lambda n, m: False)
    with pytest.raises(ValueError, match="no compressible layer"):
        select_layers(nn.Sequential(nn.ReLU()))
