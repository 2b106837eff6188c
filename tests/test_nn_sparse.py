"""Compact sparse formats: exact support extraction, no stored zeros, products vs dense."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowrank_sparse.nn.geometry import ConvGeometry
from lowrank_sparse.nn.sparse import (
    ColumnSparse,
    CSRSparse,
    NMSparse,
    RowSparse,
    compact_from_dense,
    sparse_from_config,
)
from sparse_fixtures import KINDS, masked  # tests/ is on sys.path (pytest rootdir conftest)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_to_dense_and_no_stored_zeros(kind: str, tgen: torch.Generator) -> None:
    S = masked(kind, 24, 48, tgen, block=4)
    sp = compact_from_dense(S, kind, kernel_numel=4 if kind == "channel" else 1)
    assert torch.equal(sp.to_dense(), S)
    assert sp.nnz == int(torch.count_nonzero(S))  # every stored value is a nonzero of S
    assert int(torch.count_nonzero(sp.values)) == sp.values.numel()
    # parameters = stored values only; indices are buffers
    assert sum(p.numel() for p in sp.parameters()) == sp.nnz
    assert sp.num_index_bytes(packed=False) == sum(b.numel() * b.element_size() for b in sp.buffers())


@pytest.mark.parametrize("kind", KINDS)
def test_linear_product_matches_dense(kind: str, tgen: torch.Generator) -> None:
    S = masked(kind, 20, 32, tgen, block=4)
    sp = compact_from_dense(S, kind, kernel_numel=4 if kind == "channel" else 1)
    x = torch.randn(3, 5, 32, generator=tgen)
    torch.testing.assert_close(sp.add_linear(None, x), x @ S.T, rtol=1e-5, atol=1e-5)
    base = torch.randn(3, 5, 20, generator=tgen)
    torch.testing.assert_close(sp.add_linear(base, x), base + x @ S.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["unstructured", "unstructured-unfold", "row", "column", "channel", "2:4"])
def test_conv_product_matches_dense(kind: str, tgen: torch.Generator) -> None:
    C, m, kh, kw = 6, 8, 3, 2
    S = masked(kind.split("-")[0], m, C * kh * kw, tgen, block=kh * kw)
    mode = "unfold" if kind.endswith("unfold") else "dense_kernel"
    sp = compact_from_dense(S, kind.split("-")[0], kernel_numel=kh * kw, conv_mode=mode)
    geom = ConvGeometry(C, (kh, kw), (2, 1), (1, 2), (1, 2))
    x = torch.randn(2, C, 9, 11, generator=tgen)
    ref = F.conv2d(x, S.view(m, C, kh, kw), None, (2, 1), (1, 2), (1, 2))
    torch.testing.assert_close(sp.add_conv(None, x, geom), ref, rtol=1e-5, atol=1e-5)


def test_formats_pick_the_right_class(tgen: torch.Generator) -> None:
    S = masked("row", 8, 8, tgen)
    assert isinstance(compact_from_dense(S, "row"), RowSparse)
    assert isinstance(compact_from_dense(masked("column", 8, 8, tgen), "column"), ColumnSparse)
    assert isinstance(compact_from_dense(masked("unstructured", 8, 8, tgen), "unstructured"), CSRSparse)
    assert isinstance(compact_from_dense(masked("2:4", 8, 8, tgen), "2:4"), NMSparse)
    assert compact_from_dense(torch.zeros(8, 8), "row") is None


def test_index_storage_is_compact(tgen: torch.Generator) -> None:
    S = masked("2:4", 16, 32, tgen)
    sp = compact_from_dense(S, "2:4")
    assert sp.offsets.dtype == torch.uint8 and sp.num_index_bytes(packed=False) == 16 * 16
    assert sp.num_index_bytes(packed=True) == 16 * 16 * 2 // 8  # packed: 2 bits per offset of a window of 4
    r = compact_from_dense(masked("row", 16, 32, tgen), "row")
    assert r.rows.dtype == torch.int32


@pytest.mark.parametrize("kind", KINDS)
def test_config_rebuild(kind: str, tgen: torch.Generator) -> None:
    S = masked(kind, 12, 16, tgen, block=4)
    sp = compact_from_dense(S, kind, kernel_numel=4 if kind == "channel" else 1)
    sp2 = sparse_from_config(sp.config(), dict(sp.state_dict()))
    assert type(sp2) is type(sp) and torch.equal(sp2.to_dense(), S)


def test_gradients_reach_values(tgen: torch.Generator) -> None:
    S = masked("unstructured", 10, 12, tgen)
    sp = compact_from_dense(S, "unstructured")
    x = torch.randn(4, 12, generator=tgen)
    sp.add_linear(None, x).sum().backward()
    # d/dS_ij sum(x S^T) = sum_b x_bj, at the stored positions
    torch.testing.assert_close(sp.values.grad, x.sum(0)[sp.col_indices.long()])


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        RowSparse(torch.ones(2, 3), torch.tensor([1, 1]), 4)
    with pytest.raises(ValueError, match="more than N"):
        compact_from_dense(torch.ones(2, 4), "2:4")
    with pytest.raises(ValueError, match="divisible by M"):
        compact_from_dense(torch.ones(2, 6), "2:4")
    with pytest.raises(ValueError, match="unknown sparse format"):
        sparse_from_config({"format": "bogus", "shape": [1, 1]}, {})
    with pytest.raises(ValueError, match="conv_mode"):
        CSRSparse(torch.tensor([0, 1]), torch.tensor([0]), torch.ones(1), 2, conv_mode="fast")
