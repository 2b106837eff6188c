"""Packed sparse indices (nn/sparse_index.py): bitwise round trips, documented sizes
against independent counts, corrupt input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank_sparse.nn.sparse import CSRSparse, compact_from_dense, sparse_from_config
from lowrank_sparse.nn.sparse_index import index_dtype, pack_index_state, unpack_index_state
from sparse_fixtures import KINDS, masked  # tests/ is on sys.path (pytest rootdir conftest)


def test_index_dtype() -> None:
    assert index_dtype(5) == torch.int32 and index_dtype(2**31 - 2) == torch.int32
    assert index_dtype(2**31 - 1) == torch.int64


def _bits(upper: int) -> int:
    """ceil(log2 upper), at least 1: bits of one index in [0, upper)."""
    return max(1, math.ceil(math.log2(upper)))


def support(kind: str, m: int, n: int, p: float, g: torch.Generator, block: int = 1) -> torch.Tensor:
    """S (m, n) with random nonzero values on a support of ``kind`` kept with probability p,
    plus edge cases: an all-zero row, a full row, the first and the last column."""
    S = masked(kind, m, n, g, block=block) if kind != "unstructured" else None
    if S is None:
        vals = torch.randn(m, n, generator=g).abs().add(0.1)
        mask = torch.rand(m, n, generator=g) < p
        mask[1] = False
        mask[2] = True
        mask[3, 0] = mask[3, n - 1] = True
        S = vals * mask
    return S


def plain_rice_decode(unary: bytes, rem: bytes, count: int, k: int) -> list[int]:
    """Documented layout, decoded bit by bit: gap = (ones before the next zero) * 2^k +
    k-bit remainder (bits least significant first, in a separate stream)."""
    ubits = [(unary[i // 8] >> (i % 8)) & 1 for i in range(8 * len(unary))]
    rbits = [(rem[i // 8] >> (i % 8)) & 1 for i in range(8 * len(rem))]
    out, pos = [], 0
    for j in range(count):
        q = 0
        while ubits[pos] == 1:
            q += 1
            pos += 1
        pos += 1
        r = sum(rbits[j * k + b] << b for b in range(k))
        out.append(q * 2**k + r)
    return out


DENSITIES = [0.005, 0.05, 0.3, 0.9]


@pytest.mark.parametrize("p", DENSITIES, ids=[f"p{p}" for p in DENSITIES])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_indices_round_trip_bitwise(kind: str, p: float, tgen: torch.Generator) -> None:
    S = support(kind, 40, 96, p, tgen, block=4)
    for kn in ([1, 4] if kind == "column" else [4 if kind == "channel" else 1]):
        sp = compact_from_dense(S, kind, kernel_numel=kn)
        if sp is None:
            continue
        tensors, meta = pack_index_state(sp)
        assert all(t.dtype == torch.uint8 and t.dim() == 1 for t in tensors.values())
        back = unpack_index_state(sp.config(), {k: v.clone() for k, v in tensors.items()}, meta)
        own = sp.index_state()
        assert back.keys() == own.keys()
        for k in own:
            assert back[k].dtype == own[k].dtype and torch.equal(back[k], own[k]), k
        # the module rebuilt from the decoded indices is the same S
        rebuilt = sparse_from_config(sp.config(), {**back, "values": sp.values.detach()})
        assert torch.equal(rebuilt.to_dense(), S)
        assert sp.num_index_bytes(packed=True) == sum(t.numel() for t in tensors.values())


@pytest.mark.parametrize("kind", ["row", "column", "channel", "2:4", "1:16"])
def test_packed_group_indices_take_the_documented_bits(kind: str, tgen: torch.Generator) -> None:
    m, n, block = 48, 96, 4
    S = masked(kind, m, n, tgen, block=block)
    sp = compact_from_dense(S, kind, kernel_numel=block if kind == "channel" else 1)
    if kind in ("row", "column", "channel"):
        upper = {"row": m, "column": n, "channel": n // block}[kind]
        kept = int(S.ne(0).reshape(m, n // block, block).any(2).any(0).sum()) if kind == "channel" else \
            int(S.ne(0).any(1).sum()) if kind == "row" else int(S.ne(0).any(0).sum())
        # a list of indices at ceil(log2 upper) bits or a bitmap of upper bits, the smaller
        expect = min(math.ceil(kept * _bits(upper) / 8), math.ceil(upper / 8))
    else:
        N, M = map(int, kind.split(":"))
        expect = math.ceil(m * n // M * N * _bits(M) / 8)
    assert sp.num_index_bytes(packed=True) == expect
    assert sp.num_index_bytes(packed=True) < sp.num_index_bytes(packed=False)


@pytest.mark.parametrize("p", DENSITIES, ids=[f"p{p}" for p in DENSITIES])
def test_packed_csr_is_the_smallest_code_and_near_entropy(p: float, tgen: torch.Generator) -> None:
    m, n = 64, 200
    S = support("unstructured", m, n, p, tgen)
    sp = compact_from_dense(S, "unstructured")
    tensors, meta = pack_index_state(sp)
    mask = S.ne(0).numpy()
    nnz = int(mask.sum())
    counts_bits = m * _bits(n + 1)
    # independent sizes of the three codes, from the support alone
    gaps = []
    for i in range(m):
        prev = -1
        for j in np.flatnonzero(mask[i]):
            gaps.append(int(j) - prev - 1)
            prev = int(j)
    rice = min(sum(gg >> k for gg in gaps) + len(gaps) * (1 + k) for k in range(_bits(n) + 1))
    sizes = {
        "bits": math.ceil(counts_bits / 8) + math.ceil(nnz * _bits(n) / 8),
        "rice": math.ceil(counts_bits / 8) + math.ceil(rice / 8) + 1,  # + at most one byte of stream padding
        "bitmap": math.ceil(m * n / 8),
    }
    assert sp.num_index_bytes(packed=True) <= min(sizes.values())
    assert sp.num_index_bytes(packed=True) >= min(sizes.values()) - 2
    # sparse supports: within 25% of the entropy of a Bernoulli(p) support plus the row counts
    q = nnz / (m * n)
    entropy = m * n * -(q * math.log2(q) + (1 - q) * math.log2(1 - q)) / 8
    if q <= 0.3:
        assert sp.num_index_bytes(packed=True) <= 1.25 * entropy + counts_bits / 8 + 4
    if meta["support"]["codec"] == "rice":
        sup = meta["support"]
        dec = plain_rice_decode(bytes(tensors["support.rice_unary"].numpy()), bytes(tensors["support.rice_rem"].numpy()),
                                sup["nnz"], sup["k"])
        assert dec == gaps


def test_num_index_bytes_ignores_aq_codes(tgen: torch.Generator) -> None:
    """Regression: after AQ quantization of the sparse values, the codes buffer of the AQ
    slot (a sub-module of the sparse part) was counted as index storage."""
    from lowrank_sparse.nn import LowRankSparseLinear
    from lowrank_sparse.quant import AQConfig, quantize_model
    from lowrank_sparse.solve.result import Decomposition, SolveInfo
    from lowrank_sparse.structure import parse_structure

    S = support("unstructured", 32, 48, 0.1, tgen)
    dec = Decomposition(torch.randn(32, 3, generator=tgen), torch.randn(3, 48, generator=tgen), S,
                        parse_structure("unstructured"), SolveInfo())
    pair = LowRankSparseLinear.from_decomposition(dec)
    before = (pair.num_index_bytes(), pair.sparse.num_index_bytes(packed=True))
    q = quantize_model(pair, AQConfig(M=1, K=4, d=2, iters=1, kmeans_iters=2, beam=2))
    assert hasattr(q.sparse, "aq_slots")  # the values are AQ-quantized
    crow, col = q.sparse.crow_indices, q.sparse.col_indices
    assert q.sparse.num_index_bytes(packed=False) == crow.numel() * crow.element_size() + col.numel() * col.element_size()
    assert (q.num_index_bytes(), q.sparse.num_index_bytes(packed=True)) == before


CORRUPT = {
    "rows-short": ("row", lambda t, m: ({"rows.packed": t["rows.packed"][:-1]}, m), "packed rows.*bytes"),
    "rows-out-of-range": ("row", lambda t, m: ({"rows.packed": torch.full(((m["rows"]["n"] * 6 + 7) // 8,), 0xFF, dtype=torch.uint8)},
                                               {**m, "rows": {"codec": "bits", "n": m["rows"]["n"]}}), r"rows must lie in \[0, 40\)"),
    "csr-counts-mismatch": ("unstructured", lambda t, m: (t, {**m, "support": {**m["support"], "nnz": m["support"]["nnz"] + 1}}),
                            "CSR"),
    "csr-unary-truncated": ("unstructured", lambda t, m: ({**t, "support.rice_unary": t["support.rice_unary"][:-2]}, m),
                            "CSR support"),
    "csr-codec-unknown": ("unstructured", lambda t, m: (t, {**m, "support": {**m["support"], "codec": "zip"}}), "zip"),
    "nm-missing": ("2:4", lambda t, m: ({}, m), "missing packed index tensor 'offsets.packed'"),
    "format-mismatch": ("2:4", lambda t, m: (t, {**m, "format": "csr"}), "format"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_packed_indices_raise(case: tuple, tgen: torch.Generator) -> None:
    kind, make, pattern = case
    S = support(kind, 40, 64, 0.1, tgen)
    sp = compact_from_dense(S, kind)
    tensors, meta = pack_index_state(sp)
    if kind == "unstructured":
        assert meta["support"]["codec"] == "rice"
    t2, m2 = make(tensors, meta)
    with pytest.raises(ValueError, match=pattern):
        config = sp.config()
        bufs = unpack_index_state(config, t2, m2)
        sparse_from_config(config, {**bufs, "values": sp.values.detach()})


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 40), p=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_packed_csr_round_trip_property(m: int, n: int, p: float, seed: int) -> None:
    """Any support (empty rows, full rows, a single entry, one column) packs and unpacks
    to the same CSR indices, whichever code is picked."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(m, n, generator=g) < p
    mask[0, n - 1] = True  # never empty
    S = (torch.rand(m, n, generator=g) + 0.5) * mask
    sp = CSRSparse.from_dense(S)
    tensors, meta = pack_index_state(sp)
    back = unpack_index_state(sp.config(), tensors, meta)
    assert torch.equal(back["crow_indices"], sp.crow_indices) and torch.equal(back["col_indices"], sp.col_indices)
    assert back["col_indices"].dtype == sp.col_indices.dtype
