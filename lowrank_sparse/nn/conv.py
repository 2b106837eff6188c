"""LowRankSparseConv2d: a drop-in for nn.Conv2d (groups = 1) whose weight, seen as the
matrix W (m, n) = weight.reshape(out, in*kh*kw), is L + S with L = U @ V.

Low-rank path: a kh x kw conv with g*j filters (same stride / padding / dilation as the
original; ``groups = g`` with ALDS channel slicing, slice i seeing input channels
[i*C/g, (i+1)*C/g)), then a 1x1 conv from g*j to m channels (+ bias).
Sparse path: see :mod:`lowrank_sparse.nn.sparse` (a conv over the kept output rows /
input channels, or CSR / N:M products).

Stored tensors (names as in ``state_dict``):

* ``V``: (g*j, C/g, kh, kw), the first conv's kernel (V's zero blocks are not stored);
* ``U``: (m, g*j), the 1x1 conv's kernel as a matrix;
* ``sparse.*``: the compact sparse part of the (m, C*kh*kw) matrix;
* ``bias``: (m,).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._renamed import warn_renamed
from ..solve.result import Decomposition
from ..structure import Structure, parse_structure
from ._parts import (
    PairBase,
    decomposition_tensors,
    require_decomposition,
    split_block_diagonal,
)
from .geometry import ConvGeometry, conv_output_hw, pair, symmetric_padding
from .sparse import CompactSparse, compact_from_dense

__all__ = ["LowRankSparseConv2d"]

_PAD_MODES = ("zeros", "reflect", "replicate", "circular")


class LowRankSparseConv2d(PairBase):
    """x (B, C, H, W) or (C, H, W) -> conv with weight (U @ V + S) reshaped to (m, C, kh, kw).

    Args:
        in_channels: C.
        out_channels: m.
        kernel_size, stride, padding, dilation: as for nn.Conv2d (``padding`` may be
            "valid" or a symmetric "same").
        padding_mode: "zeros", "reflect", "replicate" or "circular".
        U: (m, g*j) or None (rank 0).
        V: (g*j, C*kh*kw) (block-diagonal for slices > 1) or (g*j, C/g, kh, kw); None for
            rank 0.
        sparse: compact sparse part of the (m, C*kh*kw) matrix, or None.
        bias: (m,) or None.
        slices: g (ALDS channel slicing); must divide C.
        structure: name of the structure of S (informational).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        *,
        padding_mode: str = "zeros",
        U: Tensor | None = None,
        V: Tensor | None = None,
        sparse: CompactSparse | None = None,
        bias: Tensor | None = None,
        slices: int = 1,
        structure: str | Structure = "unstructured",
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = symmetric_padding(padding, self.kernel_size, self.dilation, self.stride)
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {_PAD_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        if slices < 1 or self.in_channels % slices:
            raise ValueError(f"slices must be >= 1 and divide in_channels={in_channels}, got {slices}")
        self.slices = int(slices)
        kk = self.kernel_size[0] * self.kernel_size[1]
        self.structure = parse_structure(structure, block=kk).name
        # zero padding is done by the convs themselves; other modes pad x up front
        pad = self.padding if padding_mode == "zeros" else (0, 0)
        self.geom = ConvGeometry(self.in_channels, self.kernel_size, self.stride, pad, self.dilation)

        self.set_parts(U, V, sparse, bias)

    def check_right_factor(self, V: Tensor, gj: int) -> Tensor:
        """V as stored, (g*j, C/g, kh, kw), from a (block-diagonal) (g*j, C*kh*kw) matrix
        or as given."""
        g, C, (kh, kw) = self.slices, self.in_channels, self.kernel_size
        n = C * kh * kw
        if V.dim() == 2:
            if V.shape != (gj, n):
                raise ValueError(f"V must be ({gj}, {n}), got {tuple(V.shape)}")
            if g > 1:
                V = split_block_diagonal(V, g)  # (g, j, n/g); n/g = (C/g)*kh*kw
            return V.reshape(gj, C // g, kh, kw)
        if V.shape != (gj, C // g, kh, kw):
            raise ValueError(f"V must be ({gj}, {n}) or ({gj}, {C // g}, {kh}, {kw}), got {tuple(V.shape)}")
        return V

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(m, n) = (out_channels, in_channels*kh*kw)."""
        return (self.out_channels, self.in_channels * self.kernel_size[0] * self.kernel_size[1])

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_conv(cls, conv: nn.Conv2d, dec: Decomposition) -> "LowRankSparseConv2d":
        """Build from the original conv (geometry, bias) and W ~ U @ V + S of its weight
        matrix (out, in*kh*kw).  Neither argument is modified.

        Raises:
            ValueError: conv.groups != 1 or shapes that do not match the conv.
            TypeError: not an nn.Conv2d / Decomposition.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        require_decomposition(dec)
        if conv.groups != 1:
            raise ValueError(f"grouped / depthwise convs (groups={conv.groups}) are not supported")
        w = conv.weight
        m, C, kh, kw = w.shape
        if dec.shape != (m, C * kh * kw):
            raise ValueError(f"decomposition shape {dec.shape} does not match the conv weight matrix ({m}, {C * kh * kw})")
        U, V, S = decomposition_tensors(dec, w, m, C * kh * kw)
        sparse = compact_from_dense(S, dec.structure, kernel_numel=kh * kw)
        return cls(
            C, m, (kh, kw), conv.stride, conv.padding, conv.dilation,
            padding_mode=conv.padding_mode, U=U, V=V, sparse=sparse,
            bias=None if conv.bias is None else conv.bias.detach(),
            slices=dec.slices, structure=dec.structure,
        )  # fmt: skip

    def geometry_config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "padding_mode": self.padding_mode,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, Tensor]) -> "LowRankSparseConv2d":
        """Rebuild from ``config()`` and tensors named as in ``state_dict()``."""
        geometry = (config["kernel_size"], config["stride"], config["padding"], config["dilation"])
        return cls(
            int(config["in_channels"]),
            int(config["out_channels"]),
            *(tuple(v) for v in geometry),
            padding_mode=str(config.get("padding_mode", "zeros")),
            **cls.state_kwargs(config, tensors),
        )

    # ------------------------------------------------------------------ compute
    # rank, the sum of the paths: see PairBase
    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
        out = self.sum_paths(x)
        return out.squeeze(0) if unbatched else out

    def low_rank_path(self, x: Tensor) -> Tensor:
        h = self.geom.conv(x, self.V, None, groups=self.slices)
        return F.conv2d(h, self.U[:, :, None, None], self.bias)

    def sparse_path(self, out: Tensor | None, x: Tensor) -> Tensor:
        return self.sparse.add_conv(out, x, self.geom)

    def dense_product(self, x: Tensor, weight: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        return self.geom.conv(x, weight.view(self.out_channels, self.in_channels, kh, kw), self.bias)

    def zero_output(self, x: Tensor) -> Tensor:
        """Zeros of the output shape, for x (B, C, H, W) as the convs see it (padded
        already unless the padding mode is zeros)."""
        Ho, Wo = conv_output_hw((x.shape[2], x.shape[3]), self.kernel_size, self.stride, self.geom.padding, self.dilation)
        return x.new_zeros(x.shape[0], self.out_channels, Ho, Wo)

    def bias_term(self) -> Tensor:
        return self.bias.view(1, -1, 1, 1)

    def low_rank_dense(self) -> Tensor:
        """(m, C*kh*kw) L = U @ V (zeros for rank 0)."""
        if self.U is None:
            return self.zero_matrix()
        g = self.slices
        V = self.V.reshape(g, self.V.shape[0] // g, -1)
        Vd = V[0] if g == 1 else torch.block_diag(*V.unbind(0))
        return self.U @ Vd

    # ------------------------------------------------------------------ counts
    # to_dense_weight, num_params, num_index_bytes, macs_per_position: see PairBase

    def output_hw(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return conv_output_hw(input_hw, self.kernel_size, self.stride, self.padding, self.dilation)

    def macs(self, input_hw: tuple[int, int] | None = None) -> int:
        """Multiply-accumulates per sample on an (H, W) input:
        H_out*W_out * (j*C*kh*kw + m*g*j + stored values of S).

        Raises:
            ValueError: ``input_hw`` missing.
        """
        if input_hw is None:
            raise ValueError("LowRankSparseConv2d.macs needs input_hw=(H, W)")
        Ho, Wo = self.output_hw(input_hw)
        return Ho * Wo * self.macs_per_position()

    def flops(self, input_hw: tuple[int, int] | None = None) -> int:
        """Deprecated alias of :meth:`macs` (the same value: multiply-accumulates)."""
        warn_renamed("LowRankSparseConv2d.flops()", "LowRankSparseConv2d.macs()")
        return self.macs(input_hw)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, rank={self.rank}, slices={self.slices}, "
            f"structure={self.structure}, bias={self.bias is not None}"
        )
