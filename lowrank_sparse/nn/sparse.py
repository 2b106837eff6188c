"""Compact storage and products for the sparse part S (m, n) of a compressed layer.

S is never stored as a dense tensor full of zeros.  One format per structure:

=================  ==========================================================  =====================
class              stored tensors                                              product
=================  ==========================================================  =====================
RowSparse          ``values`` (k, n), ``rows`` (k,) int32                      dense product on the
                                                                               kept rows, scattered
ColumnSparse       ``values`` (m, k*b), ``groups`` (k,) int32; b columns per   gather the kept input
                   group ("column": b = 1; "channel": b = kh*kw)               features / channels,
                                                                               then a smaller product
CSRSparse          ``crow_indices`` (m+1,), ``col_indices`` (nnz,) int32,      torch.sparse_csr_tensor
                   ``values`` (nnz,)                                           matmul
NMSparse           ``values`` (m, n*N/M), ``offsets`` (m, n*N/M) uint8 (the    exact, see the class
                   position of each kept entry inside its window of M)
=================  ==========================================================  =====================

The values are trainable ``nn.Parameter`` s (fine-tuning keeps the support fixed); the
indices are buffers, so ``state_dict``, ``.to(device/dtype)`` and ``torch.compile``
see them.  A weight matrix of a conv layer is handled as (out, in*kh*kw) with the
column order of ``weight.reshape(out, -1)`` (channel-major, then kh, then kw).

Every format offers the same interface:

* ``add_linear(out, x)``: ``out + x @ S^T`` for x (..., n); ``out`` (..., m) or None.
* ``add_conv(out, x, geom)``: ``out + conv2d(x, S as (m, C, kh, kw))``; x (B, C, H, W)
  already padded if the layer pads with a non-zero mode.
* ``to_dense()`` (m, n); ``nnz`` (stored values); ``num_index_bytes(packed=False)`` (in
  memory; ``packed=True``: as saved);
  ``macs_per_position()`` (multiply-accumulates of one product with one input vector /
  one output pixel); ``config()`` (JSON-able) and ``from_config(config, tensors)``.

The packed form of the indices in a saved file is :mod:`lowrank_sparse.nn.sparse_index`;
the conv geometry (:class:`~lowrank_sparse.nn.geometry.ConvGeometry`) is
:mod:`lowrank_sparse.nn.geometry`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structure import Structure, parse_structure
from .geometry import ConvGeometry, conv_output_hw
from .sparse_index import index_dtype, pack_index_state

__all__ = [
    "CompactSparse",
    "RowSparse",
    "ColumnSparse",
    "CSRSparse",
    "NMSparse",
    "compact_from_dense",
    "sparse_from_config",
]


def _csr_tensor(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # torch flags CSR as beta (a one-time UserWarning); the invariants were checked when
    # the indices were built, so the per-call check is skipped.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _add(out: Tensor | None, y: Tensor) -> Tensor:
    return y if out is None else out + y


class CompactSparse(nn.Module):
    """Base class of the compact formats; S has shape (out_features, in_features)."""

    format: str = ""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.out_features = int(out_features)
        self.in_features = int(in_features)

    values: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nnz(self) -> int:
        """Stored values (the parameter count of S)."""
        return int(self.values.numel())

    #: names of this format's index buffers (the support of S)
    index_names: tuple[str, ...] = ()

    def index_state(self) -> dict[str, Tensor]:
        """This format's own index buffers (not those of sub-modules such as the AQ slots
        of a quantized model), by name."""
        own = dict(self.named_buffers(recurse=False))
        return {k: own[k] for k in self.index_names if own.get(k) is not None}

    def num_index_bytes(self, packed: bool = False) -> int:
        """Bytes of index storage of S.

        Args:
            packed: False (default): the in-memory index buffers (int32 / int64 / uint8
                tensors the products use); True: as a file written by
                :func:`lowrank_sparse.save` stores them (bit-packed / bitmap / Rice-coded,
                see :func:`lowrank_sparse.nn.sparse_index.pack_index_state`).  Never counts values, AQ codes or codebooks.
        """
        if packed:
            return sum(int(t.numel()) for t in pack_index_state(self)[0].values())
        return sum(int(b.numel()) * b.element_size() for b in self.index_state().values())

    def macs_per_position(self) -> int:
        """Multiply-accumulates of S times one input vector (= stored values)."""
        return self.nnz

    def config(self) -> dict[str, Any]:
        return {"format": self.format, "shape": [self.out_features, self.in_features]}

    def to_dense(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        m, n = self.shape
        return f"shape=({m}, {n}), stored={self.nnz}, density={self.nnz / max(1, m * n):.4f}"


class RowSparse(CompactSparse):
    """S keeps whole rows (output features / channels).

    Args:
        values: (k, n) the kept rows.
        rows: (k,) their row indices in [0, m), strictly increasing.
        out_features: m.
    """

    format = "row"
    index_names = ("rows",)

    def __init__(self, values: Tensor, rows: Tensor, out_features: int) -> None:
        if values.dim() != 2 or rows.dim() != 1 or rows.shape[0] != values.shape[0]:
            raise ValueError(f"RowSparse needs values (k, n) and rows (k,), got {tuple(values.shape)} and {tuple(rows.shape)}")
        super().__init__(out_features, values.shape[1])
        _check_sorted_unique(rows, out_features, "rows")
        self.values = nn.Parameter(values.detach().clone())
        self.register_buffer("rows", rows.detach().to(index_dtype(out_features)).clone())

    @classmethod
    def from_dense(cls, S: Tensor) -> "RowSparse":
        rows = torch.nonzero(S.ne(0).any(dim=1)).flatten()
        return cls(S.index_select(0, rows), rows, S.shape[0])

    def to_dense(self) -> Tensor:
        out = self.values.new_zeros(self.shape)
        return out.index_copy(0, self.rows.long(), self.values)

    def _scatter(self, out: Tensor | None, y: Tensor, dim: int, full_shape: list[int]) -> Tensor:
        if out is None:
            out = y.new_zeros(full_shape)
        return out.index_add(dim, self.rows, y)

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:
        y = F.linear(x, self.values)  # (..., k)
        return self._scatter(out, y, y.dim() - 1, [*y.shape[:-1], self.out_features])

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:
        w = self.values.view(self.values.shape[0], geom.in_channels, *geom.kernel_size)
        y = geom.conv(x, w)  # (B, k, Ho, Wo)
        return self._scatter(out, y, 1, [y.shape[0], self.out_features, y.shape[2], y.shape[3]])


class ColumnSparse(CompactSparse):
    """S keeps whole groups of ``block`` consecutive columns.

    "column": block = 1 (single input features / conv taps); "channel": block = kh*kw
    (whole input channels of a conv).

    Args:
        values: (m, k*block) the kept columns, group by group.
        groups: (k,) kept group indices in [0, n/block), strictly increasing.
        in_features: n.
        block: columns per group.
        kernel_numel: kh*kw when S belongs to a conv with block == 1 (taps kept one by
            one): the channels that own a kept tap are then stored (buffer ``channels``)
            so the conv product runs over those channels only.  1 otherwise.
    """

    format = "column"
    index_names = ("groups", "channels")

    def __init__(self, values: Tensor, groups: Tensor, in_features: int, block: int = 1, kernel_numel: int = 1) -> None:
        if values.dim() != 2 or groups.dim() != 1 or values.shape[1] != groups.shape[0] * block:
            raise ValueError(
                f"ColumnSparse needs values (m, k*block) and groups (k,), got {tuple(values.shape)}, "
                f"{tuple(groups.shape)}, block={block}"
            )
        if in_features % block != 0:
            raise ValueError(f"in_features ({in_features}) must be a multiple of block ({block})")
        super().__init__(values.shape[0], in_features)
        _check_sorted_unique(groups, in_features // block, "groups")
        self.block = int(block)
        self.kernel_numel = int(kernel_numel)
        self.values = nn.Parameter(values.detach().clone())
        idt = index_dtype(in_features)
        self.register_buffer("groups", groups.detach().to(idt).clone())
        if self.block == 1 and self.kernel_numel > 1:
            if in_features % kernel_numel != 0:
                raise ValueError(f"in_features ({in_features}) must be a multiple of kh*kw ({kernel_numel})")
            ch = torch.unique(groups.detach().long() // kernel_numel)
            self.register_buffer("channels", ch.to(idt))
        else:
            self.register_buffer("channels", None)

    @classmethod
    def from_dense(cls, S: Tensor, block: int = 1, kernel_numel: int = 1) -> "ColumnSparse":
        m, n = S.shape
        keep = S.ne(0).reshape(m, n // block, block).any(dim=2).any(dim=0)
        groups = torch.nonzero(keep).flatten()
        cols = _expand(groups, block)
        return cls(S.index_select(1, cols), groups, n, block, kernel_numel)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "block": self.block, "kernel_numel": self.kernel_numel}

    def _columns(self) -> Tensor:
        return _expand(self.groups.long(), self.block)

    def to_dense(self) -> Tensor:
        return self.values.new_zeros(self.shape).index_copy(1, self._columns(), self.values)

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:
        cols = self.groups if self.block == 1 else self._columns()
        return _add(out, F.linear(x.index_select(x.dim() - 1, cols), self.values))

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:
        kk = geom.kernel_numel
        m = self.out_features
        if self.block == kk:
            # whole channels: a conv over the kept input channels only
            xs = x.index_select(1, self.groups)
            w = self.values.view(m, self.groups.shape[0], *geom.kernel_size)
            return _add(out, geom.conv(xs, w))
        if self.block != 1 or self.channels is None or self.kernel_numel != kk:
            raise ValueError(
                f"column groups of {self.block} (kernel_numel={self.kernel_numel}) do not fit a "
                f"{geom.kernel_size} kernel"
            )
        # single taps: a conv over the channels that own a kept tap, with a transient
        # (m, c, kh, kw) kernel that holds the kept taps (storage stays compact)
        g = self.groups.long()
        pos = torch.searchsorted(self.channels.long(), g // kk) * kk + g % kk
        c = self.channels.shape[0]
        w = self.values.new_zeros(m, c * kk).index_copy(1, pos, self.values)
        return _add(out, geom.conv(x.index_select(1, self.channels), w.view(m, c, *geom.kernel_size)))


class CSRSparse(CompactSparse):
    """Unstructured S in CSR form.

    Args:
        crow_indices: (m+1,) row pointers.
        col_indices: (nnz,) column of each value, increasing within a row.
        values: (nnz,).
        in_features: n.
        conv_mode: how a conv layer applies S: "unfold" (CSR product on the unfolded
            input, F.unfold) or "dense_kernel" (a transient dense kernel scattered from
            the stored values, then F.conv2d; storage stays compact).  Both are exact.
    """

    format = "csr"
    index_names = ("crow_indices", "col_indices")

    def __init__(
        self,
        crow_indices: Tensor,
        col_indices: Tensor,
        values: Tensor,
        in_features: int,
        conv_mode: str = "dense_kernel",
    ) -> None:
        if crow_indices.dim() != 1 or col_indices.dim() != 1 or values.dim() != 1:
            raise ValueError("CSRSparse needs 1-D crow_indices, col_indices and values")
        if values.shape[0] != col_indices.shape[0] or int(crow_indices[-1]) != values.shape[0] or int(crow_indices[0]) != 0:
            raise ValueError(
                f"inconsistent CSR: crow[0]={int(crow_indices[0])}, crow[-1]={int(crow_indices[-1])}, "
                f"{col_indices.shape[0]} columns, {values.shape[0]} values"
            )
        if bool((crow_indices[1:] < crow_indices[:-1]).any()):
            raise ValueError("CSR crow_indices must be non-decreasing")
        if col_indices.numel() and (int(col_indices.min()) < 0 or int(col_indices.max()) >= in_features):
            raise ValueError(f"CSR col_indices out of range [0, {in_features})")
        if conv_mode not in ("unfold", "dense_kernel"):
            raise ValueError(f"conv_mode must be 'unfold' or 'dense_kernel', got {conv_mode!r}")
        super().__init__(crow_indices.shape[0] - 1, in_features)
        idt = index_dtype(max(in_features, values.shape[0]))
        self.conv_mode = conv_mode
        self.register_buffer("crow_indices", crow_indices.detach().to(idt).clone())
        self.register_buffer("col_indices", col_indices.detach().to(idt).clone())
        self.values = nn.Parameter(values.detach().clone())

    @classmethod
    def from_dense(cls, S: Tensor, conv_mode: str = "dense_kernel") -> "CSRSparse":
        S = S.detach()
        nz = torch.nonzero(S)  # (nnz, 2), row-major order
        counts = torch.bincount(nz[:, 0], minlength=S.shape[0])
        crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        return cls(crow, nz[:, 1], S[nz[:, 0], nz[:, 1]], S.shape[1], conv_mode)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "conv_mode": self.conv_mode}

    def _rows(self) -> Tensor:
        counts = self.crow_indices[1:].long() - self.crow_indices[:-1].long()
        return torch.repeat_interleave(torch.arange(self.out_features, device=counts.device), counts)

    def to_dense(self) -> Tensor:
        flat = self._rows() * self.in_features + self.col_indices.long()
        return self.values.new_zeros(self.out_features * self.in_features).index_put((flat,), self.values).view(self.shape)

    def csr(self) -> Tensor:
        """The (m, n) torch sparse CSR tensor (shares the stored values)."""
        return _csr_tensor(self.crow_indices, self.col_indices, self.values, self.shape)

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = (self.csr() @ x2.t()).t()  # (B, m)
        return _add(out, y.reshape(*lead, self.out_features))

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:
        m = self.out_features
        if self.conv_mode == "dense_kernel":
            w = self.to_dense().view(m, geom.in_channels, *geom.kernel_size)
            return _add(out, geom.conv(x, w))
        B, _, H, W = x.shape
        cols = F.unfold(x, geom.kernel_size, geom.dilation, geom.padding, geom.stride)  # (B, n, L)
        L = cols.shape[2]
        Ho, Wo = conv_output_hw((H, W), geom.kernel_size, geom.stride, geom.padding, geom.dilation)
        y = self.csr() @ cols.transpose(0, 1).reshape(self.in_features, B * L)  # (m, B*L)
        return _add(out, y.view(m, B, Ho, Wo).transpose(0, 1))


class NMSparse(CompactSparse):
    """N:M S: in every row, N kept entries in each window of M consecutive columns.

    Args:
        values: (m, n*N/M) kept values, window by window (N per window).
        offsets: (m, n*N/M) uint8, position of each kept value inside its window (< M).
        n, m_window: N and M.

    The product is exact.  Linear, N/M > 1/8 (e.g. 2:4): a transient dense (m, n) kernel
    is scattered from the stored values and used by one dense matmul (storage stays
    compact); N/M <= 1/8: a CSR product with regular row pointers.  Conv: the transient
    dense kernel and one F.conv2d.  On CPU these beat a gather formulation and a
    per-offset split into M strided matmuls (measured at 4096 x 4096, batch 64).  On
    hardware with 2:4 sparse tensor cores (NVIDIA Ampere and later) the stored form
    maps directly to ``torch.sparse.to_sparse_semi_structured`` for ~2x fewer MACs.
    """

    format = "nm"
    index_names = ("offsets",)

    def __init__(self, values: Tensor, offsets: Tensor, n: int, m_window: int) -> None:
        if not (1 <= n < m_window <= 256):
            raise ValueError(f"N:M needs 1 <= N < M <= 256, got {n}:{m_window}")
        if values.dim() != 2 or offsets.shape != values.shape or values.shape[1] % n != 0:
            raise ValueError(f"NMSparse needs values and offsets of equal shape (m, k*N), got {tuple(values.shape)}, {tuple(offsets.shape)}")
        super().__init__(values.shape[0], values.shape[1] // n * m_window)
        if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) >= m_window):
            raise ValueError(f"N:M offsets must lie in [0, {m_window})")
        self.n = int(n)
        self.m_window = int(m_window)
        self.values = nn.Parameter(values.detach().clone())
        self.register_buffer("offsets", offsets.detach().to(torch.uint8).clone())

    @classmethod
    def from_dense(cls, S: Tensor, n: int, m_window: int) -> "NMSparse":
        rows, cols = S.shape
        if cols % m_window:
            raise ValueError(f"N:M needs n ({cols}) divisible by M={m_window}")
        win = S.reshape(rows, cols // m_window, m_window)
        nzc = win.ne(0).sum(dim=2)
        if bool((nzc > n).any()):
            raise ValueError(f"S has a window with more than N={n} nonzeros of every M={m_window}")
        # keep the nonzeros first, then the lowest positions; positions sorted within a window
        key = win.ne(0).to(torch.int32) * (2 * m_window) + (m_window - torch.arange(m_window, device=S.device))
        pos = torch.topk(key, n, dim=2).indices.sort(dim=2).values
        vals = torch.gather(win, 2, pos)
        return cls(vals.reshape(rows, -1), pos.reshape(rows, -1), n, m_window)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n": self.n, "m": self.m_window}

    def _columns(self) -> Tensor:
        """(m, n*N/M) column index of every stored value (int32 when it fits)."""
        k = self.values.shape[1]
        idt = index_dtype(self.in_features)
        base = torch.arange(k, device=self.offsets.device, dtype=idt) // self.n * self.m_window
        return base + self.offsets.to(idt)

    def to_dense(self) -> Tensor:
        m, k = self.values.shape
        w = self.values.new_zeros(m, k // self.n, self.m_window)
        idx = self.offsets.view(m, k // self.n, self.n).long()
        return w.scatter(2, idx, self.values.view(m, k // self.n, self.n)).view(self.shape)

    def add_linear(self, out: Tensor | None, x: Tensor) -> Tensor:
        if self.n * 8 > self.m_window:
            # dense enough (e.g. 2:4): one dense matmul on a transient kernel is fastest
            return _add(out, F.linear(x, self.to_dense()))
        # sparse patterns (N/M <= 1/8): a CSR product with regular row pointers
        m, k = self.values.shape
        crow = torch.arange(m + 1, device=self.values.device, dtype=index_dtype(m * k)) * k
        csr = _csr_tensor(crow, self._columns().reshape(-1), self.values.reshape(-1), self.shape)
        lead = x.shape[:-1]
        y = (csr @ x.reshape(-1, self.in_features).t()).t()
        return _add(out, y.reshape(*lead, self.out_features))

    def add_conv(self, out: Tensor | None, x: Tensor, geom: ConvGeometry) -> Tensor:
        w = self.to_dense().view(self.out_features, geom.in_channels, *geom.kernel_size)
        return _add(out, geom.conv(x, w))


def _expand(groups: Tensor, block: int) -> Tensor:
    """Column indices of the given groups of ``block`` consecutive columns."""
    if block == 1:
        return groups.long()
    return (groups.long()[:, None] * block + torch.arange(block, device=groups.device)).flatten()


def _check_sorted_unique(idx: Tensor, upper: int, name: str) -> None:
    if idx.numel() == 0:
        return
    if idx.dtype.is_floating_point:
        raise TypeError(f"{name} must be an integer tensor, got {idx.dtype}")
    if int(idx.min()) < 0 or int(idx.max()) >= upper:
        raise ValueError(f"{name} must lie in [0, {upper})")
    if idx.numel() > 1 and bool((idx[1:] <= idx[:-1]).any()):
        raise ValueError(f"{name} must be strictly increasing")


def compact_from_dense(
    S: Tensor, structure: str | Structure, *, kernel_numel: int = 1, conv_mode: str = "dense_kernel"
) -> CompactSparse | None:
    """Compact storage of S (m, n) under ``structure``; None if S has no nonzeros.

    Args:
        S: (m, n) dense sparse part, exact zeros off its support.
        structure: the structure S obeys (its groups are read from S's support).
        kernel_numel: kh*kw for a conv layer's S, 1 for a linear layer.
        conv_mode: for unstructured S of a conv, see :class:`CSRSparse`.
    """
    st = parse_structure(structure, block=kernel_numel)
    if S.dim() != 2:
        raise ValueError(f"S must be 2-D (m, n), got shape {tuple(S.shape)}")
    st.check_shape(*S.shape)
    if not bool(S.ne(0).any()):
        return None
    if st.kind == "row":
        return RowSparse.from_dense(S)
    if st.kind in ("column", "channel"):
        return ColumnSparse.from_dense(S, block=st.block if st.kind == "channel" else 1, kernel_numel=kernel_numel)
    if st.kind == "nm":
        return NMSparse.from_dense(S, st.n, st.m)
    return CSRSparse.from_dense(S, conv_mode=conv_mode)


def sparse_from_config(config: dict[str, Any], tensors: dict[str, Tensor]) -> CompactSparse:
    """Rebuild a compact format from its ``config()`` and its state tensors (names as in
    its ``state_dict``)."""
    fmt = config.get("format")
    try:
        m, n = (int(v) for v in config["shape"])
        if fmt == "row":
            return RowSparse(tensors["values"], tensors["rows"], m)
        if fmt == "column":
            return ColumnSparse(tensors["values"], tensors["groups"], n, int(config["block"]), int(config["kernel_numel"]))
        if fmt == "csr":
            return CSRSparse(tensors["crow_indices"], tensors["col_indices"], tensors["values"], n, str(config["conv_mode"]))
        if fmt == "nm":
            return NMSparse(tensors["values"], tensors["offsets"], int(config["n"]), int(config["m"]))
    except KeyError as e:
        raise ValueError(f"sparse format {fmt!r} is missing {e.args[0]!r}") from None
    raise ValueError(f"unknown sparse format {fmt!r}")
