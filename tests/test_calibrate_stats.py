"""Tests for lowrank_sparse.calibrate.stats: the streaming Gram / mean / subsample collector
(through calibrate()) and stats_error.  References are plain torch formulas on the whole
input (F.unfold, X^T X / N)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowrank_sparse.calibrate import calibrate, stats_error


def _ref_unfold(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(N, n) patches of the whole input, straight from F.unfold (zero padding)."""
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()


def test_linear_gram_and_mean_match_direct(tgen):
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(103, 7, generator=tgen)
    cal = calibrate(model, x, batch_size=10)  # 11 batches, the last one short
    st = cal.layers["0"]
    X = x.double()
    assert st.count == 103
    torch.testing.assert_close(st.gram, X.T @ X / 103, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st.mean, X.mean(0), rtol=1e-12, atol=1e-12)
    # second layer: inputs are relu(first layer)
    with torch.no_grad():
        h = torch.relu(model[0](x)).double()
    torch.testing.assert_close(cal.layers["2"].gram, h.T @ h / 103, rtol=1e-10, atol=1e-12)
    assert cal.batches == 11 and cal.samples == 103


def test_linear_gram_flattens_leading_dims(tgen):
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(6, 5, 4, generator=tgen)
    st = calibrate(model, x).layers["0"]
    X = x.reshape(-1, 4).double()
    assert st.count == 30
    torch.testing.assert_close(st.gram, X.T @ X / 30, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 3)),
        dict(kernel_size=1, stride=3),
    ],
    ids=["k3", "k3-pad1", "k3-s2-pad1", "k3x2-s2x1-pad2x1-dil2x3", "k1-s3"],
)
def test_conv_gram_matches_unfold_of_whole_input(kw, tgen):
    conv = nn.Conv2d(3, 4, **kw)
    model = nn.Sequential(conv)
    x = torch.randn(9, 3, 11, 10, generator=tgen)
    cal = calibrate(model, x, batch_size=4, chunk_rows=37)  # chunking must not matter
    st = cal.layers["0"]
    X = _ref_unfold(conv, x)
    assert st.count == X.shape[0]
    assert st.weight_shape == (4, 3 * conv.kernel_size[0] * conv.kernel_size[1])
    torch.testing.assert_close(st.gram, X.T @ X / X.shape[0], rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(st.mean, X.mean(0), rtol=1e-11, atol=1e-12)
    with torch.no_grad():
        out = conv(x)
    assert st.out_hw == tuple(out.shape[-2:]) and st.in_hw == (11, 10)
    # the patch matrix reproduces the conv: W X + b == conv(x)
    Wm = conv.weight.detach().reshape(4, -1).double()
    y = (X @ Wm.T + conv.bias.detach().double()).reshape(9, -1, 4).permute(0, 2, 1)
    torch.testing.assert_close(y, out.reshape(9, 4, -1).double(), rtol=1e-5, atol=1e-5)


def _sample_cols(model, x, **kw):
    st = calibrate(model, x, **kw).layers["0"]
    return st.sample


def test_subsample_is_bounded_deterministic_and_made_of_real_columns(tgen):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    x = torch.randn(1000, 5, generator=tgen)
    a = _sample_cols(model, x, sample_size=64, batch_size=100, seed=7)
    b = _sample_cols(model, x, sample_size=64, batch_size=100, seed=7)
    c = _sample_cols(model, x, sample_size=64, batch_size=100, seed=8)
    assert a.shape == (5, 64)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # every kept column is one of the inputs, and they are distinct
    eq = (a.T[:, None, :] == x[None, :, :]).all(dim=-1)  # (64, 1000)
    assert torch.all(eq.sum(dim=1) == 1)
    assert len(set(eq.float().argmax(dim=1).tolist())) == 64


def test_subsample_keeps_everything_when_large_enough(tgen):
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    x = torch.randn(50, 3, generator=tgen)
    s = _sample_cols(model, x, sample_size=100, batch_size=7)
    assert s.shape == (3, 50)
    got = sorted(map(tuple, s.T.tolist()))
    assert got == sorted(map(tuple, x.tolist()))


def test_subsample_is_roughly_uniform(tgen):
    # each column kept with probability k/N: first half and second half of the data
    # should be represented about equally (binomial, 5 sigma bound)
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU())
    x = torch.arange(4000, dtype=torch.float32)[:, None]
    s = _sample_cols(model, x, sample_size=1000, batch_size=500, seed=1)
    first = int((s < 2000).sum())
    assert abs(first - 500) < 5 * (1000 * 0.25) ** 0.5


def test_subsample_only_for_nonlinear_layers_unless_asked(tgen):
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(30, 5, generator=tgen)
    cal = calibrate(model, x)
    assert cal.layers["0"].sample is not None and cal.layers["2"].sample is None
    cal = calibrate(model, x, sample_all=True)
    assert cal.layers["2"].sample.shape == (4, 30)


def test_conv_subsample_columns_are_patches(tgen):
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(6, 2, 9, 9, generator=tgen)
    s = calibrate(model, x, sample_size=40, batch_size=2).layers["0"].sample
    P = _ref_unfold(conv, x).float()
    assert s.shape == (18, 40)
    dist = torch.cdist(s.T, P, compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.all(dist.min(dim=1).values < 1e-6)


def test_stats_error_matches_direct_output_error(tgen):
    lin = nn.Linear(6, 4)
    x = torch.randn(50, 6, generator=tgen) + 0.5  # nonzero mean exercises the cross terms
    st = calibrate(nn.Sequential(lin), x).layers["0"]
    W, b = lin.weight.detach(), lin.bias.detach()
    W2 = W + 0.1 * torch.randn(W.shape, generator=tgen)
    b2 = b - 0.2
    ref = (torch.linalg.norm(x @ (W - W2).T + (b - b2)) / torch.linalg.norm(x @ W.T + b)).item()
    assert stats_error(st, W, b, W2, b2) == pytest.approx(ref, rel=1e-5)
    assert stats_error(st, W, b, W) == 0.0
