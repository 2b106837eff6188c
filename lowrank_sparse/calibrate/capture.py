"""A layer's inputs as a matrix: one row per column of X (a Linear's input rows, a
conv's input patches in the column order of ``conv.weight.reshape(out, -1)``).  Conv
geometry (explicit padding, (h, w) pairs) comes from :mod:`lowrank_sparse.nn.geometry`."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.geometry import conv_padding, pair
from .layers import is_conv1d

__all__ = ["layer_input_matrix", "token_rows"]


def token_rows(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """A linear layer's input (B, T, ..., n) without the padding positions of ``mask``.

    Args:
        x: the layer's input; only an input whose first two dims are the mask's
            (B, T) is filtered (others, such as a pooler's (B, n), are returned as
            they are).
        mask: (B, T) bool, True at real tokens, or None.

    Returns:
        ``x[mask]`` (N_real, ..., n) when the shapes fit, else ``x``.
    """
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]



def layer_input_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as a (N, n) matrix, one row per column of X.

    Linear (and a ``transformers`` Conv1D): ``x.reshape(-1, in_features)``.  Conv2d (groups 1): ``x`` (B, C, H, W) is
    padded (with the conv's ``padding_mode``) and unfolded into patches with the conv's
    kernel / stride / dilation, giving (B * H_out * W_out, C * kh * kw) with the column
    order of ``conv.weight.reshape(out, -1)``.

    Raises:
        TypeError: ``module`` is neither an ``nn.Linear`` nor an ``nn.Conv2d``.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if is_conv1d(module):
        return x.reshape(-1, module.weight.shape[0])
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        pad = conv_padding(module)
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pad, mode=mode)
        cols = F.unfold(x, pair(module.kernel_size), dilation=pair(module.dilation), padding=0,
                        stride=pair(module.stride))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise TypeError(f"not a compressible layer: {type(module).__name__}")
