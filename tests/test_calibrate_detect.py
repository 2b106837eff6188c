"""Tests for lowrank_sparse.calibrate.detect / .activation: the activation after each layer,
by torch.fx and, for untraceable models, by hooks at run time."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowrank_sparse.calibrate import ActivationInfo, calibrate, detect_activations


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


def test_detect_activations_conv_bn_relu():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    infos, method, note = detect_activations(model)
    assert method == "fx" and note == ""
    assert infos["0"].name == "relu" and infos["0"].bn == "1" and infos["0"].via == "1 -> 2"
    assert infos["3"].name == "identity"


@pytest.mark.parametrize(
    "info,text",
    [
        (ActivationInfo(), "identity"),
        (ActivationInfo("relu", source="fx", bn="bn1"), "relu (after bn1, fx)"),
        (ActivationInfo("leaky_relu", negative_slope=0.2, source="hooks"), "leaky_relu(0.2) (hooks)"),
        (ActivationInfo("gelu", exact=False, source="fx"), "gelu (fx, approx)"),
    ],
    ids=["identity", "relu-bn", "leaky", "approx"],
)
def test_activation_info_describe(info, text):
    assert info.describe() == text
    assert info.nonlinear == (info.name != "identity")
