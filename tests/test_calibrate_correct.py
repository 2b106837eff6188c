"""Error-corrected targets: the cross moment E[x x_hat^T] against explicit hooks, the
corrected weight against a least-squares solve, and compress(error_correction=True)
against the objective it claims to fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import lowrank_sparse as lrs
from lowrank_sparse.calibrate import CalibrationConfig, layer_input_matrix
from lowrank_sparse.calibrate.correct import corrected_target, cross_moment


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _inputs_of(model: nn.Module, name: str, data: list, call=lambda m, b: m(b)) -> torch.Tensor:
    """(N, n) float64 rows of layer ``name``'s input over ``data``, by a plain hook."""
    mod = dict(model.named_modules())[name]
    rows = []
    def keep(m: nn.Module, i: tuple, o: torch.Tensor) -> None:  # a pair module's input is a linear's
        rows.append((layer_input_matrix(m, i[0]) if isinstance(m, (nn.Linear, nn.Conv2d))
                     else i[0].reshape(-1, i[0].shape[-1])).double())

    h = mod.register_forward_hook(keep)
    with torch.no_grad():
        for b in data:
            call(model, b)
    h.remove()
    return torch.cat(rows)


def _perturbed(model: nn.Module, gen: torch.Generator, scale: float = 0.3) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return out


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_cross_moment_matches_explicit_rows(kind, gen):
    if kind == "linear":
        dense = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 5))
        data = [torch.randn(13, 7, generator=gen), torch.randn(4, 7, generator=gen)]
        name = "2"
    else:
        dense = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2, padding=1))
        data = [torch.randn(3, 2, 6, 6, generator=gen), torch.randn(2, 2, 6, 6, generator=gen)]
        name = "2"
    comp = _perturbed(dense, gen)
    X, Xh = _inputs_of(dense, name, data), _inputs_of(comp, name, data)
    C = cross_moment(dense, comp, data, name, CalibrationConfig(chunk_rows=7))
    torch.testing.assert_close(C, X.T @ Xh / X.shape[0], rtol=1e-10, atol=1e-12)


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 6)

    def forward(self, input_ids, attention_mask=None):
        return self.fc2(torch.tanh(self.fc1(self.emb(input_ids))))


def test_cross_moment_leaves_out_padding(gen):
    dense = _Masked()
    comp = _perturbed(dense, gen)
    ids = torch.randint(0, 20, (3, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask}
    rows = {}
    for tag, m in (("d", dense), ("c", comp)):
        with torch.no_grad():
            h = m.fc1(m.emb(ids))
        rows[tag] = torch.tanh(h)[mask.bool()].double()  # fc2's input at real tokens only
    C = cross_moment(dense, comp, [batch], "fc2", CalibrationConfig())
    torch.testing.assert_close(C, rows["d"].T @ rows["c"] / 8, rtol=1e-10, atol=1e-12)


def test_corrected_target_is_the_least_squares_map(gen):
    m, n, N = 6, 10, 400
    W = torch.randn(m, n, generator=gen, dtype=torch.float64)
    X = torch.randn(n, N, generator=gen, dtype=torch.float64)
    Xh = X + 0.3 * torch.randn(n, N, generator=gen, dtype=torch.float64)
    Wc = corrected_target(W, X @ Xh.T / N, Xh @ Xh.T / N, damp=1e-12)
    # independent: min_W' ||W X - W' Xh||_F by numpy's least squares
    ref = np.linalg.lstsq(Xh.numpy().T, (W @ X).numpy().T, rcond=None)[0].T
    np.testing.assert_allclose(Wc.numpy(), ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("damp", [1e-6, 0.01, 1.0])
def test_corrected_target_is_the_weight_when_nothing_changed(damp, gen):
    W = torch.randn(5, 8, generator=gen)
    X = torch.randn(8, 50, generator=gen, dtype=torch.float64)
    G = X @ X.T / 50
    out = corrected_target(W, G, G, damp=damp)
    assert out.dtype == W.dtype
    torch.testing.assert_close(out, W, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(damp=0.0), dict(damp=float("nan")), dict(cross=torch.zeros(3, 3))])
def test_corrected_target_bad_input(bad):
    W, G = torch.ones(2, 4), torch.eye(4, dtype=torch.float64)
    kw = dict(cross=G, gram=G, damp=0.01) | bad
    with pytest.raises(ValueError, match="corrected_target"):
        corrected_target(W, **kw)


def test_error_correction_needs_sequential():
    with pytest.raises(ValueError, match="needs sequential=True"):
        CalibrationConfig(error_correction=True)


def _true_objective(dense: nn.Module, small: nn.Module, x: torch.Tensor, name: str) -> float:
    """E||W x - new(x_hat)||^2 of layer ``name`` (x: its dense input, x_hat: its input in ``small``)."""
    Xd = _inputs_of(dense, name, [x])
    Xs = _inputs_of(small, name, [x])
    W = dict(dense.named_modules())[name].weight.detach().double()
    new = dict(small.named_modules())[name]
    with torch.no_grad():
        out = new(Xs.to(torch.float32)).double() - (new.bias.double() if new.bias is not None else 0)
    return float(((Xd @ W.T - out) ** 2).sum() / Xd.shape[0])


@pytest.mark.parametrize("method,sizes", [("sparse_only", dict(density=0.3)),
                                          ("lowrank_sparse", dict(rank=2, density=0.2))], ids=["sparse", "l+s"])
def test_compress_fits_the_dense_output_on_the_new_input(method, sizes, gen):
    """A 2-layer linear net: layer 1 gets the same fit either way (its input is the
    dense one); layer 2 then sees the same x_hat in both runs, and the corrected run
    fits E||W2 x - W2_new x_hat||^2 itself, where the plain sequential fit aims at
    W2 x_hat: the corrected error on the dense output is clearly lower."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(12, 16), nn.Linear(16, 8))
    x = torch.randn(600, 12, generator=gen) * torch.linspace(0.2, 3, 12)
    kw = dict(method=method, keep_first_last=False, progress=False, **sizes)
    plain, _ = lrs.compress(dense, x, calibration=CalibrationConfig(sequential=True), **kw)
    corr, rep = lrs.compress(dense, x, calibration=CalibrationConfig(sequential=True, error_correction=True), **kw)
    torch.testing.assert_close(plain[0].to_dense_weight(), corr[0].to_dense_weight())
    e_plain, e_corr = _true_objective(dense, plain, x, "1"), _true_objective(dense, corr, x, "1")
    assert e_corr < 0.8 * e_plain
    assert rep.calibration["error_correction"] is True


def test_compress_with_error_correction_leaves_the_model_alone(gen):
    dense = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    dense.train()
    x = torch.randn(256, 10, generator=gen)
    lrs.compress(dense, x, rank=0.3, density=0.1, keep_first_last=False, progress=False, max_iter=20,
                 calibration=CalibrationConfig(sequential=True, error_correction=True))
    assert dense.training and all(m.training for m in dense.modules())
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k]), k
