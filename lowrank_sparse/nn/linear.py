"""LowRankSparseLinear: y = U (V x) + S x + b, a drop-in for nn.Linear.

Stored tensors (names as in ``state_dict``):

* ``V``: (r, n) for plain low rank; (g, j, n/g) with ALDS channel slicing (g = slices
  blocks, each of rank j, acting on input columns [i*n/g, (i+1)*n/g)), i.e. the
  block-diagonal first factor without its zero blocks.
* ``U``: (m, g*j).
* ``sparse.*``: the compact sparse part (see :mod:`lowrank_sparse.nn.sparse`).
* ``bias``: (m,).

Rank 0 means no ``U``/``V``; an S without nonzeros means no ``sparse`` submodule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._renamed import warn_renamed
from ..solve.result import Decomposition
from ..structure import Structure, parse_structure
from ._parts import (
    PairBase,
    as_tensor,
    decomposition_tensors,
    require_decomposition,
    split_block_diagonal,
)
from .sparse import CompactSparse, compact_from_dense

__all__ = ["LowRankSparseLinear"]


class LowRankSparseLinear(PairBase):
    """x (..., n) -> (..., m): U (V x) + S x + b.

    Args:
        in_features: n.
        out_features: m.
        U: (m, g*j) left factor, or None for rank 0.
        V: right factor: (g*j, n) (block-diagonal when slices > 1) or (g, j, n/g); None
            for rank 0.
        sparse: compact sparse part (m, n), or None.
        bias: (m,) or None.
        slices: g, ALDS channel slicing (1: plain low rank).
        structure: name of the structure S obeys (informational; kept in ``config()``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        U: Tensor | None = None,
        V: Tensor | None = None,
        sparse: CompactSparse | None = None,
        bias: Tensor | None = None,
        slices: int = 1,
        structure: str | Structure = "unstructured",
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if slices < 1 or self.in_features % slices:
            raise ValueError(f"slices must be >= 1 and divide in_features={in_features}, got {slices}")
        self.slices = int(slices)
        self.structure = parse_structure(structure).name
        self.set_parts(U, V, sparse, bias)

    def check_right_factor(self, V: Tensor, gj: int) -> Tensor:
        """V as stored: (r, n), or (g, j, n/g) from a block-diagonal (g*j, n) or as given."""
        g, n = self.slices, self.in_features
        if V.dim() == 2:
            if V.shape != (gj, n):
                raise ValueError(f"V must be ({gj}, {n}), got {tuple(V.shape)}")
            return split_block_diagonal(V, g) if g > 1 else V
        if V.dim() == 3:
            if g == 1 or V.shape != (g, gj // g, n // g):
                raise ValueError(f"V must be ({g}, {gj // g}, {n // g}), got {tuple(V.shape)}")
            return V
        raise ValueError(f"V must be 2-D or 3-D, got shape {tuple(V.shape)}")

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(m, n) = (out_features, in_features)."""
        return (self.out_features, self.in_features)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_decomposition(cls, dec: Decomposition, bias: Tensor | np.ndarray | None = None) -> "LowRankSparseLinear":
        """Build from W ~ U @ V + S (a copy; ``dec`` is not kept).

        Args:
            dec: the decomposition; U (m, g*j), V (g*j, n), S (m, n).
            bias: (m,) bias of the original layer, or None.
        """
        require_decomposition(dec)
        m, n = dec.shape
        U, V, S = decomposition_tensors(dec, None, m, n)
        b = None if bias is None else as_tensor(bias, like=U, name="bias")
        sparse = compact_from_dense(S, dec.structure)
        return cls(n, m, U=U, V=V, sparse=sparse, bias=b, slices=dec.slices, structure=dec.structure)

    def geometry_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, Tensor]) -> "LowRankSparseLinear":
        """Rebuild from ``config()`` and tensors named as in ``state_dict()``."""
        return cls(int(config["in_features"]), int(config["out_features"]), **cls.state_kwargs(config, tensors))

    # ------------------------------------------------------------------ compute
    # rank, the sum of the paths: see PairBase
    def forward(self, x: Tensor) -> Tensor:
        return self.sum_paths(x)

    def low_rank_path(self, x: Tensor) -> Tensor:
        if self.slices == 1:
            h = F.linear(x, self.V)
        else:
            g = self.slices
            xg = x.reshape(*x.shape[:-1], g, self.in_features // g)
            h = torch.einsum("...gi,gji->...gj", xg, self.V).flatten(-2)
        return F.linear(h, self.U, self.bias)

    def sparse_path(self, out: Tensor | None, x: Tensor) -> Tensor:
        return self.sparse.add_linear(out, x)

    def dense_product(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)

    def zero_output(self, x: Tensor) -> Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)

    def bias_term(self) -> Tensor:
        return self.bias

    def low_rank_dense(self) -> Tensor:
        """(m, n) L = U @ V (zeros for rank 0)."""
        if self.U is None:
            return self.zero_matrix()
        if self.slices == 1:
            return self.U @ self.V
        return self.U @ torch.block_diag(*self.V.unbind(0))

    # ------------------------------------------------------------------ counts
    # to_dense_weight, num_params, num_index_bytes, macs_per_position: see PairBase

    def macs(self, input_hw: tuple[int, int] | None = None) -> int:
        """Multiply-accumulates for one input vector: j*n + m*g*j + (stored values of S).

        ``input_hw`` is ignored (accepted for a uniform interface with the conv)."""
        return self.macs_per_position()

    def flops(self, input_hw: tuple[int, int] | None = None) -> int:
        """Deprecated alias of :meth:`macs` (the same value: multiply-accumulates)."""
        warn_renamed("LowRankSparseLinear.flops()", "LowRankSparseLinear.macs()")
        return self.macs(input_hw)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"slices={self.slices}, structure={self.structure}, bias={self.bias is not None}"
        )
