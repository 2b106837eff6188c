"""codec.py, the one bit packer: round trips and layouts against independent references
(plain integer arithmetic, bit by bit, and numpy's packbits)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank_sparse.codec import (
    bit_width,
    meta_int,
    pack_bitmap,
    pack_bits,
    pack_set,
    packed_size,
    rice_best_k,
    rice_decode,
    rice_encode,
    unpack_bitmap,
    unpack_bits,
    unpack_set,
)


def plain_pack(values: list[int], w: int) -> bytes:
    """Reference layout: value i occupies bits [i*w, (i+1)*w) of one big integer, least
    significant bit first, written little-endian."""
    acc = 0
    for i, v in enumerate(values):
        acc |= v << (i * w)
    return acc.to_bytes((len(values) * w + 7) // 8, "little")


@settings(max_examples=200, deadline=None)
@given(w=st.integers(1, 20), data=st.data())
def test_pack_bits_matches_plain_integer_layout(w: int, data) -> None:
    values = data.draw(st.lists(st.integers(0, 2**w - 1), max_size=60))
    p = pack_bits(np.array(values, dtype=np.int64), w)
    assert p.dtype == np.uint8 and p.ndim == 1
    assert p.tobytes() == plain_pack(values, w)
    assert p.size == packed_size(len(values), w) == (len(values) * w + 7) // 8
    back = unpack_bits(p, len(values), w)
    assert back.dtype == np.int64 and back.tolist() == values


@settings(max_examples=100, deadline=None)
@given(bits=st.lists(st.integers(0, 1), max_size=100))
def test_one_bit_values_equal_numpy_packbits(bits: list[int]) -> None:
    ref = np.packbits(np.array(bits, dtype=np.uint8), bitorder="little")
    np.testing.assert_array_equal(pack_bits(np.array(bits), 1), ref)


def test_bit_width() -> None:
    for upper in range(1, 300):
        assert bit_width(upper) == max(1, int(np.ceil(np.log2(upper))))


def test_unpack_bits_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="offsets: 2 bytes, expected 3"):
        unpack_bits(np.zeros(2, np.uint8), 5, 4, "offsets")
    with pytest.raises(ValueError, match="expected"):
        unpack_bits(np.zeros(3, np.int32), 5, 4)


@settings(max_examples=100, deadline=None)
@given(upper=st.integers(1, 200), data=st.data())
def test_bitmap_and_set_round_trip(upper: int, data) -> None:
    members = sorted(data.draw(st.sets(st.integers(0, upper - 1))))
    v = np.array(members, dtype=np.int64)
    bm = pack_bitmap(v, upper)
    mask = np.zeros(upper, dtype=np.uint8)
    mask[members] = 1
    np.testing.assert_array_equal(bm, np.packbits(mask, bitorder="little"))
    assert unpack_bitmap(bm, upper).tolist() == members
    p, meta = pack_set(v, upper)
    # the smaller of the two codes ("bits" on a tie)
    as_bits = len(members) * bit_width(upper)
    assert meta == {"codec": "bits" if as_bits <= upper else "bitmap", "n": len(members)}
    assert p.size == (packed_size(len(members), bit_width(upper)) if as_bits <= upper else (upper + 7) // 8)
    assert unpack_set(p, meta, upper).tolist() == members


def plain_rice_bits(gaps: list[int], k: int) -> tuple[list[int], list[int]]:
    unary, rem = [], []
    for g in gaps:
        unary += [1] * (g >> k) + [0]
        rem += [(g >> b) & 1 for b in range(k)]
    return unary, rem


@settings(max_examples=150, deadline=None)
@given(gaps=st.lists(st.integers(0, 500), max_size=50), kmax=st.integers(0, 10))
def test_rice_matches_plain_bit_streams(gaps: list[int], kmax: int) -> None:
    g = np.array(gaps, dtype=np.int64)
    k, cost = rice_best_k(g, kmax)
    costs = [sum(x >> kk for x in gaps) + len(gaps) * (1 + kk) for kk in range(kmax + 1)]
    assert cost == min(costs) and k == costs.index(min(costs))
    unary, rem, nbits = rice_encode(g, k)
    u_ref, r_ref = plain_rice_bits(gaps, k)
    assert nbits == len(u_ref)
    np.testing.assert_array_equal(unary, np.packbits(np.array(u_ref, dtype=np.uint8), bitorder="little"))
    np.testing.assert_array_equal(rem, np.packbits(np.array(r_ref, dtype=np.uint8), bitorder="little"))
    assert rice_decode(unary, rem, len(gaps), k, nbits).tolist() == gaps


def test_rice_decode_rejects_truncated_streams() -> None:
    g = np.array([3, 0, 9], dtype=np.int64)
    unary, rem, nbits = rice_encode(g, 1)
    with pytest.raises(ValueError, match="does not hold"):
        rice_decode(unary[:-1], rem, 3, 1, nbits)
    with pytest.raises(ValueError, match="terminated gaps"):
        rice_decode(unary, rem, 2, 1, nbits)


def test_unpack_set_and_meta_int_reject_bad_metadata() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        unpack_set(np.zeros(1, np.uint8), {"codec": "zip", "n": 0}, 8)
    with pytest.raises(ValueError, match="bitmap has 0 members, expected 2"):
        unpack_set(np.zeros(2, np.uint8), {"codec": "bitmap", "n": 2}, 16)
    for bad in (True, -1, 1.0, None):
        with pytest.raises(ValueError, match="'n' must be a non-negative int"):
            meta_int({"n": bad}, "n", "rows")
    assert meta_int({"n": 3}, "n", "rows") == 3
