"""Export forms of the compact sparse parts: the same products written with operators
that ONNX has, swapped into a copy of the model for export only.

The normal forward of a pair module is never changed; :func:`export_copy` deep-copies
the model and replaces, in the copy, each sparse part whose product ONNX cannot express, or only with a dense
constant stored in the file:

===============================  ===================================================
format (where)                   export form
===============================  ===================================================
CSRSparse (linear, both conv     :class:`ScatteredKernel`: the stored values are
modes), NMSparse (a CSR product  scattered into a transient dense (m, n) kernel inside
for N/M <= 1/8; a dense zeros    the graph (ScatterND on the flat indices, into one
kernel of fixed shape else)      expanded zero), then one MatMul / Conv
ColumnSparse of single conv      :class:`TapKernel`: the position of every kept tap in
taps (``searchsorted``)          the transient (m, c*kh*kw) kernel is precomputed
RowSparse (``index_add``)        :class:`RowGather`: the kept rows' outputs gathered
                                 into place (an exact Gather instead of a scatter-add)
===============================  ===================================================

ColumnSparse of whole channels or linear columns (Gather) exports as it is.  The file
keeps the compact form: only values and int32 indices are stored (no constant of a fixed
dense shape either); the dense kernels are computed by the graph (an ONNX runtime may fold them once when it loads the file).
Every form computes exactly the same S as ``to_dense()``; products agree with the
compact ones up to float rounding (summation order).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._parts import PairBase
from ..nn.geometry import ConvGeometry
from ..nn.sparse import ColumnSparse, CompactSparse, CSRSparse, NMSparse, RowSparse
from ..nn.sparse_index import index_dtype

__all__ = ["ScatteredKernel", "RowGather", "TapKernel", "export_form", "export_copy"]


def _add(out: Tensor | None, y: Tensor) -> Tensor:
    return y if out is None else out + y


def _zeros(like: Tensor, *shape: int) -> Tensor:
    """Zeros of ``shape`` as one zero expanded: traced as a 1-element constant and an
    Expand (``new_zeros`` of a fixed shape would be stored in the file as a dense
    constant of that shape)."""
    return like.new_zeros([1] * len(shape)).expand(*shape)


class ScatteredKernel(nn.Module):
    """S (m, n) as ``values`` (nnz,) at flat positions ``flat`` (nnz,) = row*n + column;
    the product scatters them into a dense (m, n) kernel, then runs one dense product.

    Args:
        values: (nnz,) the stored values (the Parameter itself is kept, not copied).
        flat: (nnz,) integer flat positions in [0, m*n), distinct.
        shape: (m, n).
    """

    def __init__(self, values: Tensor, flat: Tensor, shape: tuple[int, int]) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(s) for s in shape)
        self.values = values if isinstance(values, nn.Parameter) else nn.Parameter(values.detach().clone())
        self.register_buffer("flat", flat.detach().to(index_dtype(self.out_features * self.in_features)).clone())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def to_dense(self) -> Tensor:
        """(m, n) S, built by the graph (ScatterND)."""
        m, n = self.shape
        dense = _zeros(self.values, m * n).index_put((self.flat.long(),), self.values.reshape(-1))
        return dense.view(m, n)

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:
        return _add(out, F.linear(x, self.to_dense()))

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:
        w = self.to_dense().view(self.out_features, geom.in_channels, *geom.kernel_size)
        return _add(out, geom.conv(x, w))


class RowGather(nn.Module):
    """RowSparse with the scatter of the kept rows' outputs written as a gather: output
    row i reads entry ``slot[i]`` of the kept rows' outputs extended by one zero
    (``slot[i]`` = k for a row S does not keep).  Exactly ``index_add``'s sum, without
    its ONNX form's duplicate-index caveat.

    Args:
        src: the RowSparse.
    """

    def __init__(self, src: RowSparse) -> None:
        super().__init__()
        self.out_features, self.in_features = src.shape
        k = int(src.rows.shape[0])
        slot = torch.full((self.out_features,), k, dtype=torch.long)
        slot[src.rows.long()] = torch.arange(k)
        self.values = src.values
        self.register_buffer("slot", slot.to(src.rows.dtype))

    def _scatter(self, out: Tensor | None, y: Tensor, dim: int) -> Tensor:
        pad = list(y.shape)
        pad[dim] = 1
        y = torch.cat([y, y.new_zeros(pad)], dim=dim).index_select(dim, self.slot)
        return _add(out, y)

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:
        y = F.linear(x, self.values)
        return self._scatter(out, y, y.dim() - 1)

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:
        w = self.values.view(self.values.shape[0], geom.in_channels, *geom.kernel_size)
        return self._scatter(out, geom.conv(x, w), 1)


class TapKernel(nn.Module):
    """ColumnSparse of single conv taps with the kept taps' positions in the transient
    kernel precomputed (what ``ColumnSparse.add_conv`` finds with ``searchsorted``).

    Args:
        src: the ColumnSparse (block 1, kernel_numel = kh*kw > 1, ``channels`` set).
    """

    def __init__(self, src: ColumnSparse) -> None:
        super().__init__()
        if src.block != 1 or src.channels is None:
            raise ValueError("TapKernel needs a ColumnSparse of single conv taps")
        self.out_features, self.in_features = src.shape
        kk = src.kernel_numel
        g = src.groups.long()
        pos = torch.searchsorted(src.channels.long(), g // kk) * kk + g % kk
        self.kernel_numel = kk
        self.values = src.values
        self.register_buffer("groups", src.groups)
        self.register_buffer("channels", src.channels)
        self.register_buffer("positions", pos.to(src.groups.dtype))

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:
        return _add(out, F.linear(x.index_select(x.dim() - 1, self.groups), self.values))

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:
        if geom.kernel_numel != self.kernel_numel:
            raise ValueError(f"taps of a {self.kernel_numel}-tap kernel do not fit a {geom.kernel_size} kernel")
        m, c = self.out_features, int(self.channels.shape[0])
        w = _zeros(self.values, m, c * self.kernel_numel).index_copy(1, self.positions.long(), self.values)
        return _add(out, geom.conv(x.index_select(1, self.channels), w.view(m, c, *geom.kernel_size)))


def _flat_csr(sp: CSRSparse) -> Tensor:
    counts = sp.crow_indices[1:].long() - sp.crow_indices[:-1].long()
    rows = torch.repeat_interleave(torch.arange(sp.out_features, device=counts.device), counts)
    return rows * sp.in_features + sp.col_indices.long()


def _flat_nm(sp: NMSparse) -> Tensor:
    m, k = sp.values.shape
    cols = sp._columns().long()
    return (torch.arange(m, device=cols.device)[:, None] * sp.in_features + cols).reshape(-1)


def export_form(sparse: CompactSparse, conv: bool) -> nn.Module:
    """The module that stands in for ``sparse`` during export (``sparse`` itself when it
    exports as it is).  ``conv``: the sparse part belongs to a LowRankSparseConv2d."""
    if isinstance(sparse, RowSparse):
        return RowGather(sparse)
    if isinstance(sparse, CSRSparse):
        return ScatteredKernel(sparse.values, _flat_csr(sparse), sparse.shape)
    if isinstance(sparse, NMSparse):
        return ScatteredKernel(sparse.values, _flat_nm(sparse), sparse.shape)
    if isinstance(sparse, ColumnSparse) and conv and sparse.block == 1 and sparse.channels is not None:
        return TapKernel(sparse)
    return sparse


def export_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, with every pair module's sparse part in its
    export form (:func:`export_form`); ``model`` is not modified."""
    from ..nn.conv import LowRankSparseConv2d

    twin = copy.deepcopy(model).eval()
    for module in twin.modules():
        if isinstance(module, PairBase) and module.sparse is not None:
            module.sparse = export_form(module.sparse, isinstance(module, LowRankSparseConv2d))
    return twin
