"""Geometry of 2-D convolutions: (h, w) pairs, output sizes, explicit padding, and the
:class:`ConvGeometry` record the compact sparse parts convolve with.

The one home for these formulas; the module pairs, the counts and calibration import
them from here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvGeometry", "pair", "conv_output_hw", "conv_padding", "symmetric_padding"]


def _as_int(a: Any, name: str, v: Any) -> int:
    if isinstance(a, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    try:
        return operator.index(a)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None


def pair(v: Any, name: str = "value") -> tuple[int, int]:
    """``v`` as an (h, w) pair of ints: an int ``k`` gives (k, k); a sequence of two ints
    is returned as a tuple.

    Raises:
        ValueError (naming ``name``): a bool, a float, a string, or a sequence whose
        length is not 2 or whose items are not ints.
    """
    if isinstance(v, (str, bytes)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    if not isinstance(v, bool):
        try:
            k = operator.index(v)
        except TypeError:
            pass
        else:
            return (k, k)
    try:
        items = tuple(v)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (_as_int(items[0], name, v), _as_int(items[1], name, v))


def conv_output_hw(
    input_hw: tuple[int, int],
    kernel_size: tuple[int, int] | int,
    stride: tuple[int, int] | int = 1,
    padding: tuple[int, int] | int | str = 0,
    dilation: tuple[int, int] | int = 1,
) -> tuple[int, int]:
    """Output (H_out, W_out) of a 2-D conv on an (H, W) input.

    H_out = floor((H + 2*p - d*(k-1) - 1) / s) + 1; ``padding`` may be "valid" or "same".

    Raises:
        ValueError: a non-positive output size or malformed arguments.
    """
    H, W = pair(input_hw, "input_hw")
    k, s, d = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "same":
            return (H, W)
        if padding != "valid":
            raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
        p = (0, 0)
    else:
        p = pair(padding, "padding")
    out = tuple((x + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for x, kk, ss, pp, dd in zip((H, W), k, s, p, d))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"input {H}x{W} is too small for kernel {k}, stride {s}, padding {p}, dilation {d}")
    return out  # type: ignore[return-value]


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """Explicit padding (left, right, top, bottom) of a conv, as for ``F.pad``.

    Resolves ``padding="same"`` / ``"valid"`` the way torch does (for "same" the
    extra pixel of an odd total goes right / bottom).
    """
    kh, kw = pair(conv.kernel_size, "kernel_size")
    dh, dw = pair(conv.dilation, "dilation")
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = pair(conv.padding, "padding")
    return (pw, pw, ph, ph)


def symmetric_padding(
    padding: Any, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int]:
    """(ph, pw) padding on both sides for ints, "valid" or a symmetric "same".

    Raises:
        ValueError: "same" with a stride other than 1 or an odd total padding
            (d*(k-1) odd: torch pads one more pixel right / bottom), or another string.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride 1")
            tot = [d * (k - 1) for k, d in zip(kernel, dilation)]
            if any(t % 2 for t in tot):
                raise ValueError(f"padding='same' with kernel {kernel}, dilation {dilation} is asymmetric; not supported")
            return (tot[0] // 2, tot[1] // 2)
        raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
    return pair(padding, "padding")


@dataclass(frozen=True)
class ConvGeometry:
    """Geometry of a 2-D convolution (zero padding, groups = 1).

    Attributes:
        in_channels: C.
        kernel_size: (kh, kw).
        stride, padding, dilation: (h, w) pairs, as for ``F.conv2d``.
    """

    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def kernel_numel(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)
