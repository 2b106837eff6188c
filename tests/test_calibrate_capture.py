"""Tests for lowrank_sparse.calibrate.capture: a layer's inputs as a patch / row matrix."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lowrank_sparse.calibrate import conv_padding, layer_input_matrix


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


@pytest.mark.parametrize(
    "kw,expected",
    [
        (dict(kernel_size=3, padding=1), (1, 1, 1, 1)),
        (dict(kernel_size=(3, 5), padding=(2, 0)), (0, 0, 2, 2)),
        (dict(kernel_size=3, padding="valid"), (0, 0, 0, 0)),
        (dict(kernel_size=(4, 3), padding="same"), (1, 1, 1, 2)),
        (dict(kernel_size=3, padding="same", dilation=2), (2, 2, 2, 2)),
    ],
    ids=["k3-pad1", "k3x5-pad2x0", "valid", "same-even-kernel", "same-dilated"],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_conv_padding_is_explicit_left_right_top_bottom(kw, expected):
    assert conv_padding(nn.Conv2d(1, 1, **kw)) == expected


def test_linear_input_matrix_flattens_leading_dims_and_rejects_other_modules(tgen):
    x = torch.randn(2, 3, 5, generator=tgen)
    assert torch.equal(layer_input_matrix(nn.Linear(5, 2), x), x.reshape(6, 5))
    with pytest.raises(TypeError, match="not a compressible layer: ReLU"):
        layer_input_matrix(nn.ReLU(), x)
