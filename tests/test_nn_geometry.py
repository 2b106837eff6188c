"""nn/geometry.py: pair validation, output sizes against torch's conv2d, explicit padding
against torch's own "same" padding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_sparse.nn.geometry import conv_output_hw, conv_padding, pair, symmetric_padding


@pytest.mark.parametrize("v, expected", [(3, (3, 3)), ((2, 5), (2, 5)), ([0, 1], (0, 1)),
                                         (np.int64(4), (4, 4)), (torch.Size([1, 2]), (1, 2))])
def test_pair_accepts_ints_and_pairs(v, expected) -> None:
    out = pair(v, "kernel_size")
    assert out == expected and type(out) is tuple and all(type(a) is int for a in out)


@pytest.mark.parametrize("bad", [True, 2.0, (1.5, 2), (1, 2, 3), (4,), "ab", None, (True, 1), [1, "2"]])
def test_pair_rejects_bad_values_naming_the_argument(bad) -> None:
    with pytest.raises(ValueError, match="stride"):
        pair(bad, "stride")


def test_pair_default_name() -> None:
    with pytest.raises(ValueError, match="value"):
        pair((1, 2, 3))


_CASES = list(itertools.product([(1, 1), (3, 3), (2, 5)], [1, 2, (2, 3)], [0, 1, (2, 0)], [1, 2, (1, 3)]))


@pytest.mark.parametrize("k, s, p, d", _CASES)
def test_conv_output_hw_equals_conv2d(k, s, p, d) -> None:
    H, W = 13, 17
    x = torch.zeros(1, 1, H, W)
    w = torch.zeros(1, 1, *k)
    expected = tuple(F.conv2d(x, w, stride=s, padding=p, dilation=d).shape[2:])
    assert conv_output_hw((H, W), k, s, p, d) == expected


@pytest.mark.parametrize("k, d", [(3, 1), ((3, 5), (2, 1)), (1, 1)])
def test_conv_output_hw_string_padding(k, d) -> None:
    x, w = torch.zeros(1, 1, 9, 11), torch.zeros(1, 1, *pair(k))
    for mode in ("same", "valid"):
        assert conv_output_hw((9, 11), k, 1, mode, d) == tuple(F.conv2d(x, w, padding=mode, dilation=d).shape[2:])


def test_same_padding_and_too_small() -> None:
    assert conv_output_hw((9, 7), 3, 1, "same") == (9, 7)
    with pytest.raises(ValueError, match="too small"):
        conv_output_hw((2, 2), 5)
    with pytest.raises(ValueError, match="padding"):
        conv_output_hw((9, 7), 3, 1, "full")


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=(2, 4), padding="same"),
                                dict(kernel_size=(3, 2), dilation=(1, 3), padding="same"),
                                dict(kernel_size=3, padding="valid"), dict(kernel_size=(3, 5), padding=(2, 1))])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_conv_padding_reproduces_the_conv(kw) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, **kw)
    x = torch.randn(1, 2, 8, 9)
    explicit = F.conv2d(F.pad(x, conv_padding(conv)), conv.weight, conv.bias, conv.stride, 0, conv.dilation)
    torch.testing.assert_close(explicit, conv(x), rtol=0, atol=1e-6)


def test_symmetric_padding() -> None:
    assert symmetric_padding("same", (3, 5), (1, 2), (1, 1)) == (1, 4)
    assert symmetric_padding("valid", (3, 3), (1, 1), (2, 2)) == (0, 0)
    assert symmetric_padding(2, (3, 3), (1, 1), (2, 2)) == (2, 2)
    with pytest.raises(ValueError, match="stride 1"):
        symmetric_padding("same", (3, 3), (1, 1), (2, 1))
    with pytest.raises(ValueError, match="asymmetric"):
        symmetric_padding("same", (2, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        symmetric_padding("full", (3, 3), (1, 1), (1, 1))
