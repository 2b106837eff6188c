"""Pieces shared by the linear and conv module pairs."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn


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


class PairBase(nn.Module):
    """What LowRankSparseLinear and LowRankSparseConv2d share: the dense weight and the
    counts.  Subclasses set ``U``, ``V``, ``bias`` (or None), ``sparse`` (a compact sparse
    part or None) and define ``low_rank_dense()`` -> (m, n)."""

    def low_rank_dense(self) -> Tensor:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def to_dense_weight(self) -> Tensor:
        """(m, n) U @ V + S: the weight of the equivalent dense layer (for a conv,
        ``.view(m, C, kh, kw)`` is the kernel)."""
        W = self.low_rank_dense()
        if self.sparse is not None:
            W = W + self.sparse.to_dense()
        return W

    def num_params(self) -> int:
        """Stored values: factors (zero blocks of V excluded) + sparse values + bias."""
        n = sum(int(p.numel()) for p in (self.U, self.V, self.bias) if p is not None)
        return n + (0 if self.sparse is None else int(self.sparse.nnz))

    def num_index_bytes(self, packed: bool = False) -> int:
        """Bytes of index storage of the sparse part: in memory (int32 indices) by
        default, or as :func:`lowrank_sparse.save` stores them (``packed=True``)."""
        return 0 if self.sparse is None else int(self.sparse.num_index_bytes(packed=packed))
