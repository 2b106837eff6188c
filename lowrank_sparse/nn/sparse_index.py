"""The index buffers of the compact sparse formats: their in-memory dtype, and their
packed form in a saved file (lowrank_sparse.io, schema version 3).

Codes (see :mod:`lowrank_sparse.codec`), per format:

* RowSparse rows / ColumnSparse groups: "bits" or "bitmap", whichever is smaller.
  ColumnSparse ``channels`` is derived from the groups and not stored.
* NMSparse offsets: "bits" (ceil(log2 M) bits each: 2 bits for 2:4, 4 bits for 1:16).
* CSRSparse: the smallest of (a) per-row counts ("bits") + columns ("bits"), (b) per-row
  counts + within-row column gaps ("rice"; the first gap of a row is the column itself,
  later ones col - previous col - 1), (c) one bitmap of the whole (m, n) support.

This module reads the formats' buffers by their names (dispatch on ``format``) and does
not import the format classes, so :mod:`lowrank_sparse.nn.sparse` can use it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..codec import (
    bit_width,
    meta_int,
    pack_bitmap,
    pack_bits,
    pack_set,
    rice_best_k,
    rice_decode,
    rice_encode,
    unpack_bitmap,
    unpack_bits,
    unpack_set,
)

__all__ = ["index_dtype", "pack_index_state", "unpack_index_state"]

Packed = tuple[dict[str, np.ndarray], dict[str, Any]]


def index_dtype(upper: int) -> torch.dtype:
    """Smallest of int32/int64 that holds values up to ``upper``."""
    return torch.int32 if upper < 2**31 - 1 else torch.int64


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)


# ----------------------------------------------------------------------------- packing
def _pack_row(sp: nn.Module) -> Packed:
    p, mt = pack_set(_np(sp.rows), sp.out_features)
    return {"rows.packed": p}, {"rows": mt}


def _pack_column(sp: nn.Module) -> Packed:
    p, mt = pack_set(_np(sp.groups), sp.in_features // sp.block)
    return {"groups.packed": p}, {"groups": mt}


def _pack_nm(sp: nn.Module) -> Packed:
    p = pack_bits(_np(sp.offsets), bit_width(sp.m_window))
    return {"offsets.packed": p}, {"offsets": {"codec": "bits", "n": int(sp.offsets.numel()),
                                               "rows": int(sp.offsets.shape[0])}}


def _csr_gaps(crow: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Within-row gaps: the column for a row's first entry, col - previous col - 1 after."""
    nnz = int(col.size)
    if not nnz:
        return col
    counts = np.diff(crow)
    row_start = np.zeros(nnz, dtype=bool)
    row_start[crow[:-1][counts > 0]] = True
    prev = np.concatenate([[-1], col[:-1]])
    return np.where(row_start, col, col - prev - 1)


def _pack_csr(sp: nn.Module) -> Packed:
    m, n = sp.shape
    crow, col = _np(sp.crow_indices), _np(sp.col_indices)
    nnz = int(col.size)
    counts = np.diff(crow)
    g = _csr_gaps(crow, col)
    k, rice_bits = rice_best_k(g, bit_width(n)) if nnz else (0, 0)
    wc = bit_width(n + 1)
    cost = {"bits": m * wc + nnz * bit_width(n), "rice": m * wc + rice_bits + 7, "bitmap": m * n}
    codec = min(cost, key=lambda c: (cost[c], c))
    meta: dict[str, Any] = {"codec": codec, "nnz": nnz}
    if codec == "bitmap":
        rows = np.repeat(np.arange(m), counts)
        return {"support.bitmap": pack_bitmap(rows * n + col, m * n)}, {"support": meta}
    out = {"support.counts": pack_bits(counts, wc)}
    if codec == "bits":
        out["support.columns"] = pack_bits(col, bit_width(n))
    else:
        unary, rem, nbits = rice_encode(g, k)
        out["support.rice_unary"], out["support.rice_rem"] = unary, rem
        meta.update(k=k, unary_bits=nbits)
    return out, {"support": meta}


_PACKERS: dict[str, Callable[[nn.Module], Packed]] = {
    "row": _pack_row, "column": _pack_column, "nm": _pack_nm, "csr": _pack_csr,
}


def pack_index_state(sp: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The support of ``sp`` in its compact stored form.

    Returns:
        (tensors, meta): tensors = {name: uint8 (bytes,)} (names local to the module, e.g.
        "support.rice_unary"); meta = JSON-able description ("codec", counts, Rice
        parameter) that :func:`unpack_index_state` needs with the module's ``config()``.
    """
    packer = _PACKERS.get(sp.format)
    if packer is None:
        raise TypeError(f"cannot pack the indices of {type(sp).__name__}")
    arrays, info = packer(sp)
    meta: dict[str, Any] = {"format": sp.format, **info}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, meta


# ----------------------------------------------------------------------------- unpacking
class _Source:
    """The packed tensors and meta of one sparse part, with checked access."""

    def __init__(self, fmt: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.fmt, self.tensors, self.meta = fmt, tensors, meta

    def get(self, name: str) -> np.ndarray:
        t = self.tensors.get(name)
        if t is None:
            raise ValueError(f"missing packed index tensor {name!r}")
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise ValueError(f"packed index tensor {name!r} must be 1-D uint8, got {tuple(t.shape)} {t.dtype}")
        return t.numpy()

    def sub(self, key: str) -> dict[str, Any]:
        v = self.meta.get(key)
        if not isinstance(v, dict):
            raise ValueError(f"packed indices of a {self.fmt!r} part have no {key!r} metadata")
        return v


def _unpack_row(src: _Source, config: dict[str, Any], m: int, n: int) -> dict[str, Tensor]:
    rows = unpack_set(src.get("rows.packed"), src.sub("rows"), m, "rows")
    return {"rows": torch.from_numpy(rows).to(index_dtype(m))}


def _unpack_column(src: _Source, config: dict[str, Any], m: int, n: int) -> dict[str, Tensor]:
    block, kk = int(config["block"]), int(config["kernel_numel"])
    if block < 1 or n % block:
        raise ValueError(f"column config: block {block} does not divide {n}")
    groups = unpack_set(src.get("groups.packed"), src.sub("groups"), n // block, "groups")
    idt = index_dtype(n)
    out = {"groups": torch.from_numpy(groups).to(idt)}
    if block == 1 and kk > 1:
        out["channels"] = torch.from_numpy(np.unique(groups // kk)).to(idt)
    return out


def _unpack_nm(src: _Source, config: dict[str, Any], m: int, n: int) -> dict[str, Tensor]:
    mw = int(config["m"])
    mt = src.sub("offsets")
    cnt, rows = meta_int(mt, "n", "offsets"), meta_int(mt, "rows", "offsets")
    if rows != m or (rows and cnt % rows):
        raise ValueError(f"packed offsets: {cnt} values in {rows} rows do not fit a ({m}, {n}) N:M part")
    off = unpack_bits(src.get("offsets.packed"), cnt, bit_width(mw), "offsets").astype(np.uint8)
    return {"offsets": torch.from_numpy(off.reshape(rows, -1) if rows else off)}


def _csr_columns_from_gaps(g: np.ndarray, counts: np.ndarray, nnz: int) -> np.ndarray:
    """Inverse of :func:`_csr_gaps` given the per-row counts."""
    start = np.concatenate([[0], np.cumsum(counts)])[:-1]
    c = np.cumsum(g + 1)
    base = np.repeat(np.where(start > 0, c[np.maximum(start - 1, 0)] if nnz else 0, 0), counts)
    return c - base - 1


def _csr_decode(src: _Source, m: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(per-row counts, columns, nnz) of a packed CSR support, before the range checks."""
    mt = src.sub("support")
    nnz, codec = meta_int(mt, "nnz", "CSR support"), mt.get("codec")
    if codec == "bitmap":
        flat = unpack_bitmap(src.get("support.bitmap"), m * n, "CSR support")
        if flat.size != nnz:
            raise ValueError(f"packed CSR support: bitmap has {flat.size} entries, expected {nnz}")
        return np.bincount(flat // n, minlength=m), flat % n, nnz
    if codec not in ("bits", "rice"):
        raise ValueError(f"packed CSR support: unknown codec {codec!r}")
    counts = unpack_bits(src.get("support.counts"), m, bit_width(n + 1), "CSR row counts")
    if int(counts.sum()) != nnz or (counts.size and counts.max() > n):
        raise ValueError(f"packed CSR row counts sum to {int(counts.sum())}, expected {nnz}")
    if codec == "bits":
        return counts, unpack_bits(src.get("support.columns"), nnz, bit_width(n), "CSR columns"), nnz
    k, nbits = meta_int(mt, "k", "CSR support"), meta_int(mt, "unary_bits", "CSR support")
    if k > 62:
        raise ValueError(f"packed CSR support: Rice parameter {k} out of range")
    g = rice_decode(src.get("support.rice_unary"), src.get("support.rice_rem"), nnz, k, nbits, "CSR support")
    return counts, _csr_columns_from_gaps(g, counts, nnz), nnz


def _unpack_csr(src: _Source, config: dict[str, Any], m: int, n: int) -> dict[str, Tensor]:
    counts, col, nnz = _csr_decode(src, m, n)
    if col.size and (col.min() < 0 or col.max() >= n):
        raise ValueError(f"packed CSR support decodes to columns outside [0, {n})")
    crow = np.concatenate([[0], np.cumsum(counts)])
    same_row = np.ones(max(nnz - 1, 0), dtype=bool)
    same_row[crow[1:-1][(crow[1:-1] > 0) & (crow[1:-1] < nnz)] - 1] = False
    if nnz > 1 and bool((np.diff(col)[same_row] <= 0).any()):
        raise ValueError("packed CSR support decodes to columns that do not increase within a row")
    idt = index_dtype(max(n, nnz))
    return {"crow_indices": torch.from_numpy(crow).to(idt), "col_indices": torch.from_numpy(col).to(idt)}


_UNPACKERS = {"row": _unpack_row, "column": _unpack_column, "nm": _unpack_nm, "csr": _unpack_csr}


def unpack_index_state(config: dict[str, Any], tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Tensor]:
    """Inverse of :func:`pack_index_state`: the module's index buffers (names as in its
    ``state_dict``, dtypes as its constructor stores them) from its ``config()``, the packed
    tensors and the meta.

    Raises:
        ValueError: missing / mis-sized packed tensors, metadata that does not fit the
            config, or decoded indices out of range (corrupt file).
    """
    fmt = config.get("format")
    if meta.get("format") != fmt:
        raise ValueError(f"packed indices are for format {meta.get('format')!r}, the layer is {fmt!r}")
    try:
        m, n = (int(v) for v in config["shape"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"sparse config has no valid shape: {config!r}") from None
    unpacker = _UNPACKERS.get(fmt) if isinstance(fmt, str) else None
    if unpacker is None:
        raise ValueError(f"unknown sparse format {fmt!r}")
    return unpacker(_Source(str(fmt), tensors, meta), config, m, n)
