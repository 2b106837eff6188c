"""nn/_parts.py: the pieces the linear and conv pairs share, against plain torch formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.nn._parts import (
    as_tensor,
    check_left_factor,
    decomposition_tensors,
    factors_or_none,
    require_decomposition,
    sparse_from_state,
    split_block_diagonal,
)
from lowrank_sparse.nn.sparse import compact_from_dense
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure


def test_as_tensor_views_numpy_and_casts() -> None:
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = as_tensor(a)
    assert t.dtype == torch.float64 and t.data_ptr() == a.ctypes.data  # no copy
    like = torch.zeros(1, dtype=torch.float32)
    assert torch.equal(as_tensor(a, like=like), torch.tensor(a.tolist(), dtype=torch.float32))
    with pytest.raises(TypeError, match="dec.U must be"):
        as_tensor([1, 2], name="dec.U")


@pytest.mark.parametrize("g", [1, 2, 3])
def test_split_block_diagonal_inverts_block_diag(g: int, tgen: torch.Generator) -> None:
    blocks = torch.randn(g, 2, 4, generator=tgen)
    V = torch.block_diag(*blocks.unbind(0))  # (g*2, g*4)
    assert torch.equal(split_block_diagonal(V, g), blocks)
    if g > 1:
        V[0, -1] = 1.0
        with pytest.raises(ValueError, match="not block-diagonal"):
            split_block_diagonal(V, g)
    with pytest.raises(ValueError, match="cannot be split"):
        split_block_diagonal(torch.zeros(5, 7), 2)


def test_factor_checks() -> None:
    U, V = torch.ones(4, 2), torch.ones(2, 6)
    assert factors_or_none(U, V) == (U, V)
    assert factors_or_none(torch.ones(4, 0), torch.ones(0, 6)) == (None, None)
    assert factors_or_none(None, None) == (None, None)
    with pytest.raises(ValueError, match="both"):
        factors_or_none(U, None)
    check_left_factor(torch.ones(4, 6), 4, 3)
    for bad, g in ((torch.ones(5, 6), 3), (torch.ones(4, 5), 3), (torch.ones(4), 1)):
        with pytest.raises(ValueError, match="U must be"):
            check_left_factor(bad, 4, g)


def test_decomposition_tensors(tgen: torch.Generator) -> None:
    S = torch.randn(3, 5, generator=tgen)
    dec = Decomposition(np.ones((3, 2)), np.ones((2, 5)), S.double().numpy(), parse_structure("unstructured"), SolveInfo())
    U, V, T = decomposition_tensors(dec, torch.zeros(1), 3, 5)
    assert U.dtype == V.dtype == T.dtype == torch.float32 and torch.equal(T, S)
    assert decomposition_tensors(dec, None, 3, 5)[2].dtype == torch.float64  # U's dtype
    with pytest.raises(ValueError, match=r"dec.S must be \(3, 4\)"):
        decomposition_tensors(dec, None, 3, 4)
    with pytest.raises(TypeError, match="Decomposition"):
        require_decomposition((U, V, T))


def test_sparse_from_state(tgen: torch.Generator) -> None:
    S = torch.randn(4, 6, generator=tgen) * (torch.rand(4, 6, generator=tgen) < 0.4)
    sp = compact_from_dense(S, "unstructured")
    tensors = {f"sparse.{k}": v for k, v in sp.state_dict().items()} | {"U": torch.ones(1)}
    rebuilt = sparse_from_state({"sparse": sp.config()}, tensors)
    assert torch.equal(rebuilt.to_dense(), S)
    assert sparse_from_state({"sparse": None}, tensors) is None


def _plain(U, V, S, b, x):
    """y = U (V x) + S x + b, written out."""
    y = x @ V.t() @ U.t() if U is not None else torch.zeros(x.shape[0], S.shape[0])
    return y + x @ S.t() + (0 if b is None else b)


@pytest.mark.parametrize("rank", [0, 2])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_sparse", [False, True])
def test_sum_of_paths_is_the_same_for_linear_and_1x1_conv(rank, with_bias, with_sparse, tgen) -> None:
    m, n = 5, 7
    U = torch.randn(m, rank, generator=tgen) if rank else None
    V = torch.randn(rank, n, generator=tgen) if rank else None
    S = torch.randn(m, n, generator=tgen) * (torch.rand(m, n, generator=tgen) < 0.3) if with_sparse else torch.zeros(m, n)
    b = torch.randn(m, generator=tgen) if with_bias else None
    sp = compact_from_dense(S, "unstructured")
    lin = LowRankSparseLinear(n, m, U=U, V=V, sparse=sp, bias=b)
    conv = LowRankSparseConv2d(n, m, 1, U=U, V=V, sparse=compact_from_dense(S, "unstructured"), bias=b)
    x = torch.randn(3, n, generator=tgen)
    ref = _plain(U, V, S, b, x)
    torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x[:, :, None, None])[:, :, 0, 0], ref, rtol=1e-5, atol=1e-5)
    # counts from the shared base: factors + nonzeros + bias; MACs r*n + m*r + nnz
    nnz = int(S.ne(0).sum())
    params = rank * (m + n) + nnz + (m if with_bias else 0)
    assert lin.num_params() == conv.num_params() == params
    assert lin.macs_per_position() == conv.macs_per_position() == rank * n + m * rank + nnz
    assert lin.rank == conv.rank == rank
    torch.testing.assert_close(lin.to_dense_weight(), (U @ V if rank else torch.zeros(m, n)) + S)


def test_config_has_class_geometry_then_shared_fields(tgen: torch.Generator) -> None:
    lin = LowRankSparseLinear(6, 4, U=torch.ones(4, 2), V=torch.ones(2, 6), bias=torch.zeros(4))
    assert list(lin.config()) == ["class", "in_features", "out_features", "rank", "slices", "structure", "bias", "sparse"]
    conv = LowRankSparseConv2d(2, 3, 3, padding=1)
    assert list(conv.config())[:8] == ["class", "in_channels", "out_channels", "kernel_size", "stride", "padding",
                                       "dilation", "padding_mode"]
    assert conv.config()["rank"] == 0 and conv.config()["sparse"] is None
    rebuilt = LowRankSparseConv2d.from_config(conv.config(), {})
    assert rebuilt.config() == conv.config() and isinstance(rebuilt, nn.Module)
    x = torch.randn(1, 2, 5, 5, generator=tgen)
    assert torch.equal(rebuilt(x), torch.zeros(1, 3, 5, 5))
    assert torch.equal(F.linear(torch.ones(1, 6), lin.to_dense_weight()), lin(torch.ones(1, 6)))
