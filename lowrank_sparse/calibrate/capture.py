"""A layer's inputs as a matrix: one row per column of X (a Linear's input rows, a
conv's input patches in the column order of ``conv.weight.reshape(out, -1)``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["conv_padding", "layer_input_matrix"]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """Explicit padding (left, right, top, bottom) of a conv, as for ``F.pad``.

    Resolves ``padding="same"`` / ``"valid"`` the way torch does (for "same" the
    extra pixel of an odd total goes right / bottom).
    """
    kh, kw = _pair(conv.kernel_size)
    dh, dw = _pair(conv.dilation)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = _pair(conv.padding)
    return (pw, pw, ph, ph)


def layer_input_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as a (N, n) matrix, one row per column of X.

    Linear: ``x.reshape(-1, in_features)``.  Conv2d (groups 1): ``x`` (B, C, H, W) is
    padded (with the conv's ``padding_mode``) and unfolded into patches with the conv's
    kernel / stride / dilation, giving (B * H_out * W_out, C * kh * kw) with the column
    order of ``conv.weight.reshape(out, -1)``.

    Raises:
        TypeError: ``module`` is neither an ``nn.Linear`` nor an ``nn.Conv2d``.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        pad = conv_padding(module)
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pad, mode=mode)
        cols = F.unfold(x, _pair(module.kernel_size), dilation=_pair(module.dilation), padding=0,
                        stride=_pair(module.stride))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise TypeError(f"not a compressible layer: {type(module).__name__}")
