"""Tests for lowrank_sparse.calibrate: Gram / mean / subsample collection, activation
detection, BatchNorm folding and input validation.  References are plain torch
formulas on the whole input (F.unfold, X^T X / N)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lowrank_sparse.calibrate import (
    calibrate,
    detect_activations,
    find_layers,
    iter_batches,
    layer_input_matrix,
    stats_error,
)


def _ref_unfold(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(N, n) patches of the whole input, straight from F.unfold (zero padding)."""
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()


# ------------------------------------------------------------------------------- Gram


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


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"], ids=lambda m: f"pad-{m}")
def test_conv_same_padding_and_padding_modes(mode, tgen):
    conv = nn.Conv2d(2, 3, kernel_size=(4, 3), padding="same", padding_mode=mode)
    x = torch.randn(3, 2, 7, 6, generator=tgen)
    P = layer_input_matrix(conv, x)
    Wm = conv.weight.detach().reshape(3, -1)
    with torch.no_grad():
        ref = conv(x)
        y = (P @ Wm.T + conv.bias).reshape(3, -1, 3).permute(0, 2, 1).reshape(ref.shape)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["tensor", "list", "tuples", "loader"])
def test_data_forms_give_the_same_statistics(form, tgen):
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(40, 6, generator=tgen)
    y = torch.arange(40)
    data = {
        "tensor": x,
        "list": list(x.split(8)),
        "tuples": list(zip(x.split(8), y.split(8))),
        "loader": DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False),
    }[form]
    st = calibrate(model, data, batch_size=8, seed=3).layers["0"]
    X = x.double()
    torch.testing.assert_close(st.gram, X.T @ X / 40, rtol=1e-12, atol=1e-12)
    ref = calibrate(model, x, batch_size=8, seed=3).layers["0"]
    assert torch.equal(st.sample, ref.sample)


# -------------------------------------------------------------------------- subsample


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


# ------------------------------------------------------------------------ activations


@pytest.mark.parametrize(
    "act,name,slope,exact",
    [
        (nn.ReLU(), "relu", None, True),
        (nn.ReLU(inplace=True), "relu", None, True),
        (nn.LeakyReLU(0.2), "leaky_relu", 0.2, True),
        (nn.GELU(), "gelu", None, True),
        (nn.GELU(approximate="tanh"), "gelu", None, False),
        (nn.SiLU(), "silu", None, True),
        (nn.Tanh(), "tanh", None, True),
        (nn.ReLU6(), "relu", None, False),
        (nn.Sigmoid(), "identity", None, True),
    ],
    ids=["relu", "relu-inplace", "leaky0.2", "gelu", "gelu-tanh", "silu", "tanh", "relu6", "sigmoid"],
)
def test_sequential_activation_detection(act, name, slope, exact, tgen):
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), act, nn.Linear(6, 2))
    cal = calibrate(model, torch.randn(10, 4, generator=tgen))
    info = cal.layers["0"].activation
    assert cal.detection == "fx"
    assert (info.name, info.exact) == (name, exact)
    if slope is not None:
        assert info.negative_slope == pytest.approx(slope)
    assert cal.layers["3"].activation.name == "identity"


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.fc4 = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        h = self.fc3(x)
        x = F.leaky_relu(h, 0.1) + h  # two consumers: not a plain activation
        return self.fc4(x).relu()


def test_functional_activations_via_fx(tgen):
    cal = calibrate(_Functional(), torch.randn(12, 5, generator=tgen))
    acts = {n: s.activation for n, s in cal.layers.items()}
    assert cal.detection == "fx"
    assert acts["fc1"].name == "relu"
    assert acts["fc2"].name == "tanh"
    assert acts["fc3"].name == "identity" and "2 consumers" in acts["fc3"].note
    assert acts["fc4"].name == "relu"


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.act = nn.LeakyReLU(0.3)
        self.b = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.r = nn.ReLU()
        self.c = nn.Linear(6, 2)

    def forward(self, x):
        if float(x.sum()) > 1e12:  # data-dependent control flow: fx cannot trace this
            return x
        h = self.r(self.bn(self.b(self.act(self.a(x)))))
        return F.relu(self.c(h))


def test_runtime_detection_when_not_traceable(tgen):
    model = _Untraceable()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    cal = calibrate(model, torch.randn(16, 5, generator=tgen))
    assert cal.detection == "hooks" and "not fx-traceable" in cal.detection_note
    a, b, c = (cal.layers[k].activation for k in "abc")
    assert (a.name, a.negative_slope, a.source) == ("leaky_relu", pytest.approx(0.3), "hooks")
    assert (b.name, b.bn) == ("relu", "bn")
    assert c.name == "identity" and "functional" in c.note  # F.relu is invisible to hooks
    assert cal.layers["a"].sample is not None and cal.layers["c"].sample is None


def test_runtime_detection_ignores_inplace_modified_outputs(tgen):
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.r = nn.ReLU()

        def forward(self, x):
            if float(x.sum()) > 1e12:
                return x
            h = self.fc(x)
            h += x  # residual added in place: the ReLU does not see fc's output
            return self.r(h)

    cal = calibrate(Res(), torch.randn(8, 4, generator=tgen))
    assert cal.layers["fc"].activation.name == "identity"


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


def test_detect_activations_conv_bn_relu():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    infos, method, note = detect_activations(model)
    assert method == "fx" and note == ""
    assert infos["0"].name == "relu" and infos["0"].bn == "1" and infos["0"].via == "1 -> 2"
    assert infos["3"].name == "identity"


# ------------------------------------------------------------------- layers and errors


def test_grouped_convs_are_skipped_with_reason():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1, groups=2), nn.Conv2d(8, 8, 1))
    layers, skipped = find_layers(model)
    assert [n for n, _ in layers] == ["2"]
    assert "depthwise" in skipped["0"] and "grouped" in skipped["1"]
    cal = calibrate(model, torch.randn(2, 4, 5, 5))
    assert set(cal.layers) == {"2"} and "groups=4" in cal.skipped["0"]


def test_model_is_not_modified(tgen):
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    before = copy.deepcopy(model.state_dict())
    calibrate(model, torch.randn(10, 5, generator=tgen))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_wrong_shape_names_the_first_failing_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(ValueError, match=r"layer '0'.*\(5, 3, 8, 8\)"):
        calibrate(model, torch.randn(5, 3, 8, 8))
    with pytest.raises(ValueError, match=r"layer '3'.*\(5, 98\)"):
        calibrate(model, torch.randn(5, 1, 9, 9))
    # hooks were removed even though the forward failed
    assert not model[0]._forward_hooks and not model[3]._forward_pre_hooks


@pytest.mark.parametrize(
    "data",
    [torch.empty(0, 4), [], DataLoader(TensorDataset(torch.empty(0, 4)), batch_size=4)],
    ids=["empty-tensor", "empty-list", "empty-loader"],
)
def test_empty_data_raises(data):
    with pytest.raises(ValueError, match="empty"):
        calibrate(nn.Sequential(nn.Linear(4, 2)), data)


def test_no_compressible_layer_raises():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 3, groups=3))
    with pytest.raises(ValueError, match="no compressible layer.*groups=3"):
        calibrate(model, torch.randn(2, 3, 5, 5))


def test_nan_input_names_the_layer():
    with pytest.raises(ValueError, match=r"layer '0'.*NaN"):
        calibrate(nn.Sequential(nn.Linear(3, 2)), torch.tensor([[1.0, float("nan"), 0.0]]))
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(3e38)  # overflows to inf inside the first layer
    with pytest.raises(ValueError, match=r"layer '1'.*(Inf|NaN)"):
        calibrate(model, torch.ones(2, 3))


def test_bad_arguments():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="layer 'nope'"):
        calibrate(model, torch.randn(2, 3), layers=["nope"])
    with pytest.raises(TypeError, match="calibration data"):
        calibrate(model, 3.0)
    with pytest.raises(TypeError, match="batch 0"):
        list(iter_batches([("not a tensor", 1)]))
    with pytest.raises(ValueError, match="sample_size"):
        calibrate(model, torch.randn(2, 3), sample_size=-1)


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
