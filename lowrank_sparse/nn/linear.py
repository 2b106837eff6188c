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
from torch import Tensor, nn

from ..solve.result import Decomposition
from ..structure import Structure, parse_structure
from ._parts import PairBase, attach_sparse_and_bias
from .sparse import CompactSparse, compact_from_dense, sparse_from_config

__all__ = ["LowRankSparseLinear", "split_block_diagonal", "as_tensor"]


def as_tensor(a: Any, *, like: Tensor | None = None, name: str = "array") -> Tensor:
    """A torch copy-free view of a numpy array / tensor (cast to ``like``'s dtype/device)."""
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
    elif isinstance(a, Tensor):
        t = a
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t.detach()


def split_block_diagonal(V: Tensor, slices: int) -> Tensor:
    """The diagonal blocks of a block-diagonal (g*j, n) matrix, as (g, j, n/g).

    Raises:
        ValueError: n or the row count not divisible by g, or a nonzero off its blocks.
    """
    gj, n = V.shape
    g = slices
    if gj % g or n % g:
        raise ValueError(f"V of shape {tuple(V.shape)} cannot be split into {g} diagonal blocks")
    j, c = gj // g, n // g
    blocks = V.reshape(g, j, g, c)
    idx = torch.arange(g, device=V.device)
    diag = blocks[idx, :, idx, :]  # (g, j, c)
    off = blocks.abs().sum(dim=(1, 3))
    off = off - torch.diag(torch.diagonal(off))
    if bool(off.ne(0).any()):
        raise ValueError(f"V is not block-diagonal with {g} slices (nonzeros off the diagonal blocks)")
    return diag.contiguous()


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
        m, n, g = self.out_features, self.in_features, self.slices
        if (U is None) != (V is None):
            raise ValueError("U and V must both be given or both be None")
        if U is not None and U.shape[1] == 0:
            U = V = None
        if U is not None and V is not None:
            if U.dim() != 2 or U.shape[0] != m or U.shape[1] % g:
                raise ValueError(f"U must be (m={m}, g*j) with g={g}, got {tuple(U.shape)}")
            if V.dim() == 2:
                if V.shape != (U.shape[1], n):
                    raise ValueError(f"V must be ({U.shape[1]}, {n}), got {tuple(V.shape)}")
                if g > 1:
                    V = split_block_diagonal(V, g)
            elif V.dim() == 3:
                if g == 1 or V.shape != (g, U.shape[1] // g, n // g):
                    raise ValueError(f"V must be ({g}, {U.shape[1] // g}, {n // g}), got {tuple(V.shape)}")
            else:
                raise ValueError(f"V must be 2-D or 3-D, got shape {tuple(V.shape)}")
            self.U = nn.Parameter(U.detach().clone())
            self.V = nn.Parameter(V.detach().clone())
        else:
            self.register_parameter("U", None)
            self.register_parameter("V", None)
        attach_sparse_and_bias(self, sparse, bias, m, n)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_decomposition(cls, dec: Decomposition, bias: Tensor | np.ndarray | None = None) -> "LowRankSparseLinear":
        """Build from W ~ U @ V + S (a copy; ``dec`` is not kept).

        Args:
            dec: the decomposition; U (m, g*j), V (g*j, n), S (m, n).
            bias: (m,) bias of the original layer, or None.
        """
        if not isinstance(dec, Decomposition):
            raise TypeError(f"dec must be a Decomposition, got {type(dec).__name__}")
        U = as_tensor(dec.U, name="dec.U")
        V = as_tensor(dec.V, like=U, name="dec.V")
        S = as_tensor(dec.S, like=U, name="dec.S")
        m, n = dec.shape
        if S.shape != (m, n):
            raise ValueError(f"dec.S must be ({m}, {n}), got {tuple(S.shape)}")
        b = None if bias is None else as_tensor(bias, like=U, name="bias")
        sparse = compact_from_dense(S, dec.structure)
        return cls(n, m, U=U, V=V, sparse=sparse, bias=b, slices=dec.slices, structure=dec.structure)

    def config(self) -> dict[str, Any]:
        """JSON-able description; with the state tensors it rebuilds the module."""
        return {
            "class": type(self).__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "slices": self.slices,
            "structure": self.structure,
            "bias": self.bias is not None,
            "sparse": None if self.sparse is None else self.sparse.config(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, Tensor]) -> "LowRankSparseLinear":
        """Rebuild from ``config()`` and tensors named as in ``state_dict()``."""
        sp = _sparse_from(config, tensors)
        return cls(
            int(config["in_features"]),
            int(config["out_features"]),
            U=tensors.get("U"),
            V=tensors.get("V"),
            sparse=sp,
            bias=tensors.get("bias"),
            slices=int(config.get("slices", 1)),
            structure=str(config.get("structure", "unstructured")),
        )

    # ------------------------------------------------------------------ compute
    @property
    def rank(self) -> int:
        """Rank per slice j (the rank of L when slices == 1); 0 without low-rank part."""
        return 0 if self.U is None else int(self.U.shape[1]) // self.slices

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor | None = None
        if self.U is not None:
            if self.slices == 1:
                h = F.linear(x, self.V)
            else:
                g = self.slices
                xg = x.reshape(*x.shape[:-1], g, self.in_features // g)
                h = torch.einsum("...gi,gji->...gj", xg, self.V).flatten(-2)
            out = F.linear(h, self.U, self.bias)
        if self.sparse is not None:
            out = self.sparse.add_linear(out, x)
            if self.U is None and self.bias is not None:
                out = out + self.bias
        if out is None:
            out = x.new_zeros(*x.shape[:-1], self.out_features)
            if self.bias is not None:
                out = out + self.bias
        return out

    def low_rank_dense(self) -> Tensor:
        """(m, n) L = U @ V (zeros for rank 0)."""
        m, n = self.out_features, self.in_features
        if self.U is None:
            ref = self.bias if self.bias is not None else (self.sparse.values if self.sparse is not None else None)
            return torch.zeros(m, n) if ref is None else ref.new_zeros(m, n)
        if self.slices == 1:
            return self.U @ self.V
        return self.U @ torch.block_diag(*self.V.unbind(0))

    # ------------------------------------------------------------------ counts
    # to_dense_weight, num_params, num_index_bytes: see PairBase

    def flops(self, input_hw: tuple[int, int] | None = None) -> int:
        """Multiply-accumulates for one input vector: j*n + m*g*j + (stored values of S).

        ``input_hw`` is ignored (accepted for a uniform interface with the conv)."""
        return self.macs_per_position()

    def macs_per_position(self) -> int:
        m, n = self.out_features, self.in_features
        lr = 0 if self.U is None else self.rank * n + m * int(self.U.shape[1])
        return lr + (0 if self.sparse is None else self.sparse.macs_per_position())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"slices={self.slices}, structure={self.structure}, bias={self.bias is not None}"
        )


def _sparse_from(config: dict[str, Any], tensors: dict[str, Tensor]) -> CompactSparse | None:
    sc = config.get("sparse")
    if sc is None:
        return None
    sub = {k[len("sparse."):]: v for k, v in tensors.items() if k.startswith("sparse.")}
    return sparse_from_config(sc, sub)
