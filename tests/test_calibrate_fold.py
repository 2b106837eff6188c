"""Tests for lowrank_sparse.calibrate.fold: the one BatchNorm folding, for the allocator and
the solves.  References: the BatchNorm formula W * gamma / sqrt(var + eps) per row, written out."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowrank_sparse.budget import Budget
from lowrank_sparse.calibrate import calibrate, folded_problem, unfold_decomposition
from lowrank_sparse.calibrate.fold import bn_affine, fold_affine, solver_scale
from lowrank_sparse.compress import compress


def test_batchnorm_folding_reproduces_the_post_activation_output(tgen):
    lin = nn.Linear(6, 5)
    bn = nn.BatchNorm1d(5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1, generator=tgen)
        bn.running_var.uniform_(0.3, 3, generator=tgen)
        bn.weight.uniform_(0.5, 2, generator=tgen)
        bn.bias.uniform_(-1, 1, generator=tgen)
    model = nn.Sequential(lin, bn, nn.ReLU())
    model.train()  # calibration must switch to eval (running stats) and restore
    x = torch.randn(20, 6, generator=tgen)
    st = calibrate(model, x).layers["0"]
    assert model.training and bn.training
    assert st.activation.name == "relu" and st.activation.bn == "1"
    Wf, bf = st.folded(lin.weight, lin.bias)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(torch.relu(x @ Wf.T + bf), ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_without_running_stats_is_not_folded(tgen):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ReLU())
    st = calibrate(model, torch.randn(8, 3, generator=tgen)).layers["0"]
    assert st.activation.name == "identity" and "running statistics" in st.activation.note
    assert st.bn_scale is None


# ------------------------------------------------------------- one fold, zero scales


def _bn_scale_formula(bn: nn.BatchNorm2d) -> torch.Tensor:
    """gamma / sqrt(var + eps), float64, straight from the BatchNorm's buffers."""
    return bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)


def _guarded(a: torch.Tensor) -> torch.Tensor:
    return torch.where(a == 0, torch.ones_like(a), a)


class _ConvBN(nn.Module):
    """conv(bias) -> BN (gamma = 0 in channel 2) -> relu -> conv -> relu -> fc."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-1, 1, generator=gen)
            self.bn1.running_var.uniform_(0.3, 3, generator=gen)
            self.bn1.weight.uniform_(0.5, 2, generator=gen)
            self.bn1.bias.uniform_(-1, 1, generator=gen)
            self.bn1.weight[2] = 0.0
        self.eval()

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


@pytest.fixture
def conv_bn(tgen):
    return _ConvBN(tgen), torch.randn(24, 2, 8, 8, generator=tgen)


def test_solver_view_of_a_zero_bn_scale_matches_the_formula(conv_bn):
    model, x = conv_bn
    st = calibrate(model, x).layers["conv1"]
    a = _bn_scale_formula(model.bn1)
    assert a[2] == 0 and st.activation.bn == "bn1"
    W = model.conv1.weight.detach().reshape(6, -1)
    b = model.conv1.bias.detach()
    c = model.bn1.bias.detach().double() - model.bn1.running_mean.double() * a
    prob = folded_problem(st, model.conv1)
    g = _guarded(a)
    torch.testing.assert_close(prob.weight, W * g.float()[:, None], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(prob.bias, (g * b.double() + c).float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(prob.weight[2], W[2])  # the guarded row is the layer's own
    torch.testing.assert_close(prob.scale, g, rtol=1e-12, atol=0)
    # the objective view keeps the true (zero) scale: that channel's output is constant
    Wo, _ = st.folded(model.conv1.weight, model.conv1.bias)
    assert torch.all(Wo[2] == 0)


def test_allocator_sees_the_weight_the_solver_fits_with_a_zero_bn_scale(conv_bn, monkeypatch):
    """With a budget, the LayerSpec weight the allocator ranks and the weight every solve
    (error_fn and final) fits are the same tensor values, and both are W * guarded(a)."""
    B = importlib.import_module("lowrank_sparse.budget")
    M = importlib.import_module("lowrank_sparse.compress.methods")
    model, x = conv_bn
    seen_alloc: dict[str, torch.Tensor] = {}
    seen_solve: dict[str, list[torch.Tensor]] = {}
    real_alloc, real_solve = B.allocate, M.solve_layer

    def alloc(layers, *args, **kwargs):
        seen_alloc.update({l.name: l.weight.clone() for l in layers})
        return real_alloc(layers, *args, **kwargs)

    def solve(config, problem):
        for name, W in seen_alloc.items():
            if W.shape == problem.weight.shape:
                seen_solve.setdefault(name, []).append(problem.weight.clone())
        return real_solve(config, problem)

    monkeypatch.setattr(B, "allocate", alloc)
    monkeypatch.setattr(M, "solve_layer", solve)
    _, rep = compress(model, x, target=Budget(params=0.6), allocation="uniform", keep_first_last=False,
                      max_iter=15, progress=False)
    assert rep.layer("conv1").status == "compressed" and seen_solve.get("conv1")
    g = _guarded(_bn_scale_formula(model.bn1)).float()
    ref = model.conv1.weight.detach().reshape(6, -1) * g[:, None]
    torch.testing.assert_close(seen_alloc["conv1"], ref, rtol=1e-6, atol=1e-7)
    for W in seen_solve["conv1"]:
        assert torch.equal(W, seen_alloc["conv1"])


def test_unfold_divides_the_rows_by_the_folded_scale(tgen):
    from lowrank_sparse.solve.result import Decomposition, SolveInfo

    U, V, S = (torch.randn(4, 2, generator=tgen), torch.randn(2, 3, generator=tgen),
               torch.randn(4, 3, generator=tgen))
    scale = torch.tensor([2.0, 0.5, 1.0, 4.0], dtype=torch.float64)
    dec = Decomposition(U=U, V=V, S=S, structure="unstructured", info=SolveInfo(), slices=1)
    out = unfold_decomposition(dec, scale)
    torch.testing.assert_close(out.U, U / scale.float()[:, None])
    torch.testing.assert_close(out.S, S / scale.float()[:, None])
    assert out.V is V and unfold_decomposition(dec, None) is dec


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_fold_affine_formula(bias, tgen):
    W = torch.randn(3, 5, generator=tgen)
    b = torch.randn(3, generator=tgen) if bias else None
    a = torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64)
    c = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    Wf, bf = fold_affine(W, b, a, c)
    torch.testing.assert_close(Wf, torch.diag(a.float()) @ W)
    torch.testing.assert_close(bf, (a.float() * b + c.float()) if bias else c.float())
    W0, b0 = fold_affine(W, b, None, None)  # no BatchNorm: unchanged
    assert torch.equal(W0, W) and (b0 is None if b is None else torch.equal(b0, b))
    assert solver_scale(a).tolist() == [0.5, -2.0, 1.0] and a[2] == 0  # a copy


def test_bn_affine_checks_the_feature_count():
    bn = nn.BatchNorm1d(4).eval()
    with pytest.raises(ValueError, match="4 features.*3 outputs"):
        bn_affine(bn, 3)
