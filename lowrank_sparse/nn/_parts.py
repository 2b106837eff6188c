"""Pieces shared by the linear and conv module pairs."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def attach_sparse_and_bias(module: nn.Module, sparse: Optional[Any], bias: Optional[torch.Tensor], m: int, n: int) -> None:
    """Register the sparse part (dropped when it holds no nonzero) and a bias (m,) copy.

    Raises ValueError when the sparse part is not (m, n) or the bias not (m,).
    """
    if sparse is not None:
        if sparse.shape != (m, n):
            raise ValueError(f"sparse part must be ({m}, {n}), got {sparse.shape}")
        if sparse.nnz == 0:
            sparse = None
    module.sparse = sparse
    if bias is not None:
        if bias.shape != (m,):
            raise ValueError(f"bias must be ({m},), got {tuple(bias.shape)}")
        module.bias = nn.Parameter(bias.detach().clone())
    else:
        module.register_parameter("bias", None)
