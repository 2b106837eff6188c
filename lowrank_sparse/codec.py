"""Exact integer codes on numpy arrays: the one bit packer of the library.

Used for the sparse indices of a saved model (:mod:`lowrank_sparse.nn.sparse_index`) and
for AQ codes (:mod:`lowrank_sparse.quant.pack`).  All codes are lossless; decoders check
sizes and raise ValueError on corrupt input.  Bits are laid out least significant first
(numpy ``packbits(bitorder="little")``), values one after another.

* "bits": n values in [0, 2^w), each at w bits: ceil(n*w/8) bytes.
* "bitmap": a set of distinct values in [0, upper) as ``upper`` membership bits.
* "rice": non-negative gaps g as q = g >> k in unary (q ones, then a zero) in one stream
  and r = g & (2^k - 1) at k bits in a second stream.
* "set": a strictly increasing set in [0, upper) as "bits" or "bitmap", the smaller.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "bit_width",
    "packed_size",
    "pack_bits",
    "unpack_bits",
    "pack_bitmap",
    "unpack_bitmap",
    "rice_best_k",
    "rice_encode",
    "rice_decode",
    "pack_set",
    "unpack_set",
    "meta_int",
]


def bit_width(upper: int) -> int:
    """Bits for one value in [0, upper): max(1, bit_length(upper - 1))."""
    return max(1, (int(upper) - 1).bit_length())


def packed_size(n: int, w: int) -> int:
    """Bytes of n values at w bits each: ceil(n*w/8)."""
    return (int(n) * int(w) + 7) // 8


def pack_bits(v: np.ndarray, w: int) -> np.ndarray:
    """(n,) non-negative ints < 2^w (any shape, read flat) -> uint8 (ceil(n*w/8),)."""
    v = np.asarray(v, dtype=np.int64).reshape(-1)
    if w == 0 or v.size == 0:
        return np.zeros(0, dtype=np.uint8)
    bits = ((v[:, None] >> np.arange(w, dtype=np.int64)[None, :]) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_bits(p: np.ndarray, n: int, w: int, what: str = "values") -> np.ndarray:
    """Inverse of :func:`pack_bits`: (n,) int64.

    Raises:
        ValueError: ``p`` is not a 1-D uint8 array of exactly ceil(n*w/8) bytes.
    """
    need = packed_size(n, w)
    if p.dtype != np.uint8 or p.ndim != 1 or p.size != need:
        raise ValueError(f"packed {what}: {p.size} bytes, expected {need} ({n} values x {w} bits)")
    if n == 0 or w == 0:
        return np.zeros(n, dtype=np.int64)
    bits = np.unpackbits(p, count=n * w, bitorder="little").reshape(n, w).astype(np.int64)
    return (bits << np.arange(w, dtype=np.int64)[None, :]).sum(axis=1)


def pack_bitmap(v: np.ndarray, upper: int) -> np.ndarray:
    """Distinct values in [0, upper) -> uint8 (ceil(upper/8),) membership bits."""
    mask = np.zeros(upper, dtype=np.uint8)
    mask[np.asarray(v, dtype=np.int64)] = 1
    return np.packbits(mask, bitorder="little")


def unpack_bitmap(p: np.ndarray, upper: int, what: str = "set") -> np.ndarray:
    """Inverse of :func:`pack_bitmap`: the members, increasing, int64."""
    need = (upper + 7) // 8
    if p.dtype != np.uint8 or p.ndim != 1 or p.size != need:
        raise ValueError(f"packed {what}: {p.size} bytes, expected a bitmap of {need} bytes ({upper} bits)")
    return np.flatnonzero(np.unpackbits(p, count=upper, bitorder="little")).astype(np.int64)


def _rice_cost(g: np.ndarray, k: int) -> int:
    return int((g >> k).sum()) + g.size * (1 + k)


def rice_best_k(g: np.ndarray, kmax: int) -> tuple[int, int]:
    """(k, total bits) of the Rice parameter in [0, kmax] that codes ``g`` in the fewest
    bits (ties: the smallest k)."""
    cost, k = min((_rice_cost(g, k), k) for k in range(kmax + 1))
    return k, cost


def rice_encode(g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Non-negative int64 gaps -> (unary stream, remainder stream, unary bit count)."""
    q = g >> k
    nbits = int(q.sum()) + g.size
    unary = np.ones(nbits, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    return np.packbits(unary, bitorder="little"), pack_bits(g & ((1 << k) - 1), k), nbits


def rice_decode(unary: np.ndarray, rem: np.ndarray, n: int, k: int, nbits: int, what: str = "gaps") -> np.ndarray:
    """Inverse of :func:`rice_encode`: the n gaps, int64."""
    if unary.dtype != np.uint8 or unary.ndim != 1 or unary.size != (nbits + 7) // 8 or nbits < n:
        raise ValueError(f"packed {what}: unary stream of {unary.size} bytes does not hold {nbits} bits for {n} gaps")
    bits = np.unpackbits(unary, count=nbits, bitorder="little")
    zeros = np.flatnonzero(bits == 0)
    if zeros.size != n or (n and zeros[-1] != nbits - 1):
        raise ValueError(f"packed {what}: unary stream holds {zeros.size} terminated gaps, expected {n}")
    q = np.diff(np.concatenate([[-1], zeros])) - 1
    return (q << k) + unpack_bits(rem, n, k, what)


def pack_set(v: np.ndarray, upper: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A strictly increasing set in [0, upper): (bytes, {"codec": "bits" | "bitmap", "n"}),
    whichever code is smaller ("bits" on a tie)."""
    if v.size * bit_width(upper) <= upper:
        return pack_bits(v, bit_width(upper)), {"codec": "bits", "n": int(v.size)}
    return pack_bitmap(v, upper), {"codec": "bitmap", "n": int(v.size)}


def unpack_set(p: np.ndarray, meta: dict[str, Any], upper: int, what: str = "set") -> np.ndarray:
    """Inverse of :func:`pack_set`; ``meta`` is its description."""
    n = meta_int(meta, "n", what)
    if meta.get("codec") == "bits":
        return unpack_bits(p, n, bit_width(upper), what)
    if meta.get("codec") == "bitmap":
        out = unpack_bitmap(p, upper, what)
        if out.size != n:
            raise ValueError(f"packed {what}: bitmap has {out.size} members, expected {n}")
        return out
    raise ValueError(f"packed {what}: unknown codec {meta.get('codec')!r}")


def meta_int(meta: dict[str, Any], key: str, what: str) -> int:
    """``meta[key]`` checked to be a non-negative int (not a bool); ValueError otherwise."""
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"packed {what}: metadata {key!r} must be a non-negative int, got {v!r}")
    return v
