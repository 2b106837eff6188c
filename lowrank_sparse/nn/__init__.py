"""The module pair that replaces nn.Linear / nn.Conv2d by low rank + compact sparse, and
exact parameter / multiply-accumulate counts.

Modules: ``linear`` / ``conv`` (the pair classes), ``_parts`` (what they share),
``sparse`` (the compact sparse formats), ``sparse_index`` (their index buffers' dtype and
packed form), ``geometry`` (conv geometry), ``counts`` (parameters / MACs), ``conv1d``
(transformers' Conv1D as the Linear it is, :class:`Conv1DLinear`).
Dependencies go one way: counts -> linear, conv -> _parts -> sparse -> sparse_index ->
:mod:`lowrank_sparse.codec`; geometry depends on nothing in the package.
"""

from __future__ import annotations

from .conv import LowRankSparseConv2d
from .conv1d import Conv1DLinear, is_conv1d
from .counts import dense_flops, dense_macs, dense_params, model_flops, model_macs, model_params, module_macs
from .geometry import conv_output_hw, conv_padding, pair
from .linear import LowRankSparseLinear
from .sparse import ColumnSparse, CompactSparse, CSRSparse, NMSparse, RowSparse, compact_from_dense

__all__ = [
    "LowRankSparseLinear",
    "LowRankSparseConv2d",
    "Conv1DLinear",
    "is_conv1d",
    "CompactSparse",
    "RowSparse",
    "ColumnSparse",
    "CSRSparse",
    "NMSparse",
    "compact_from_dense",
    "conv_output_hw",
    "conv_padding",
    "pair",
    "dense_params",
    "dense_macs",
    "module_macs",
    "model_params",
    "model_macs",
    "dense_flops",
    "model_flops",
]
