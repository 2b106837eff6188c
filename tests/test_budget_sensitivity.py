"""End-to-end layer sensitivities: the probe against its closed form on a model whose
answer is known, and the allocator moving budget to the sensitive layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lowrank_sparse as lrs
from lowrank_sparse.budget import Budget, LayerSpec, allocate
from lowrank_sparse.budget.sensitivity import layer_sensitivities, output_tensor


class TwoBranch(nn.Module):
    """y = a(x) + c * b(x): noise on a's output reaches y fully, on b's scaled by c."""

    def __init__(self, c: float = 0.1) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 8), nn.Linear(16, 8), c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.c * self.b(x)


def test_sensitivity_matches_its_closed_form():
    torch.manual_seed(0)
    net = TwoBranch(0.1)
    x = torch.randn(4096, 16)
    s = layer_sensitivities(net, x, ["a", "b"], batch_size=4096, max_batches=1)
    with torch.no_grad():
        ya, yb = net.a(x), net.b(x)
    # ||eps rms(o) N|| = eps rms(o) sqrt(numel) (up to sampling): s_k ~ c_k rms(o_k) sqrt(numel) / ||y||
    rms = lambda t: float(t.square().mean().sqrt())  # noqa: E731
    ref = {"a": rms(ya), "b": 0.1 * rms(yb)}
    mean = sum(ref.values()) / 2
    for k in ref:
        assert s[k] == pytest.approx(ref[k] / mean, rel=0.03), (k, s, ref)
    assert sum(s.values()) / 2 == pytest.approx(1.0)


def test_sensitivity_leaves_the_model_alone():
    net = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    layer_sensitivities(net, torch.randn(64, 6), ["0", "2"])
    assert all(m.training for m in net.modules())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("kw, match", [(dict(names=["nope"]), "not modules"), (dict(eps=0.0), "eps"),
                                        (dict(max_batches=0), "max_batches")], ids=["name", "eps", "batches"])
def test_sensitivity_bad_input(kw, match):
    net = nn.Sequential(nn.Linear(4, 4))
    args = dict(names=["0"]) | kw
    with pytest.raises(ValueError, match=match):
        layer_sensitivities(net, torch.randn(8, 4), **args)


def test_output_tensor_of_mappings_and_tuples():
    t = torch.ones(2)
    assert output_tensor({"loss": None, "logits": t}) is t and output_tensor((None, t)) is t
    with pytest.raises(TypeError, match="no tensor"):
        output_tensor({"x": 1})


def _decaying(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    U, _, V = torch.linalg.svd(torch.randn(m, n, generator=gen), full_matrices=False)
    return (U * torch.logspace(0, -1.5, min(m, n))) @ V


def test_allocator_gives_the_sensitive_layer_more():
    gen = torch.Generator().manual_seed(0)
    W = _decaying(48, 64, gen)
    plain = [LayerSpec("x", W.clone()), LayerSpec("y", W.clone())]
    weighted = [LayerSpec("x", W.clone(), sensitivity=4.0), LayerSpec("y", W.clone(), sensitivity=0.25)]
    size = {}
    for tag, layers in (("plain", plain), ("weighted", weighted)):
        alloc = allocate(layers, Budget(params=0.3), mode="rank_only", keep_first_last=False)
        size[tag] = {a.name: a.rank for a in alloc.layers}
    assert size["plain"]["x"] == size["plain"]["y"]  # identical layers, identical share
    assert size["weighted"]["x"] > size["weighted"]["y"]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_layer_spec_sensitivity_must_be_positive(bad):
    with pytest.raises(ValueError, match="sensitivity"):
        LayerSpec("x", torch.ones(2, 2), sensitivity=bad)


def test_budget_weighting_is_checked_and_recorded():
    with pytest.raises(ValueError, match="weighting"):
        Budget(params=0.5, weighting="by-size")
    assert Budget(params=0.5, weighting="sensitivity").as_dict()["weighting"] == "sensitivity"


def test_compress_with_sensitivity_weighting_meets_the_budget():
    torch.manual_seed(0)
    net = TwoBranch(0.05)
    x = torch.randn(512, 16)
    small, rep = lrs.compress(net, x, Budget(params=0.5, weighting="sensitivity", scope="layers"),
                              method="rank_only", keep_first_last=False, progress=False)
    by = {r.name: r for r in rep.layers}
    assert by["a"].rank > by["b"].rank  # b's output is scaled by 0.05: its error barely matters
    kept = sum(r.params_after for r in rep.layers) / sum(r.params_before for r in rep.layers)
    assert kept <= 0.5 * 1.02
