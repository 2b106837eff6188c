"""What the linear and conv module pairs share: factor checks, building from a
decomposition or a config, the sum of the low-rank and sparse paths, and the counts.

A pair holds W (m, n) = U @ V + S as ``U`` (m, g*j), ``V`` (its per-class layout),
``sparse`` (a compact sparse part or None) and ``bias`` (m,) or None; for a conv,
n = C*kh*kw and W is ``weight.reshape(m, -1)``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..solve.result import Decomposition
from .sparse import CompactSparse, sparse_from_config

__all__ = ["PairBase", "as_tensor", "split_block_diagonal", "attach_sparse_and_bias", "sparse_from_state"]


def as_tensor(a: Any, *, like: Tensor | None = None, name: str = "array") -> Tensor:
    """A torch copy-free view of a numpy array / tensor (cast to ``like``'s dtype/device)."""
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
    elif isinstance(a, Tensor):
        t = a
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t.detach()


def split_block_diagonal(V: Tensor, slices: int) -> Tensor:
    """The diagonal blocks of a block-diagonal (g*j, n) matrix, as (g, j, n/g).

    Raises:
        ValueError: n or the row count not divisible by g, or a nonzero off its blocks.
    """
    gj, n = V.shape
    g = slices
    if gj % g or n % g:
        raise ValueError(f"V of shape {tuple(V.shape)} cannot be split into {g} diagonal blocks")
    j, c = gj // g, n // g
    blocks = V.reshape(g, j, g, c)
    idx = torch.arange(g, device=V.device)
    diag = blocks[idx, :, idx, :]  # (g, j, c)
    off = blocks.abs().sum(dim=(1, 3))
    off = off - torch.diag(torch.diagonal(off))
    if bool(off.ne(0).any()):
        raise ValueError(f"V is not block-diagonal with {g} slices (nonzeros off the diagonal blocks)")
    return diag.contiguous()


def attach_sparse_and_bias(module: nn.Module, sparse: Optional[Any], bias: Optional[torch.Tensor], m: int, n: int) -> None:
    """Register the sparse part (dropped when it holds no nonzero) and a bias (m,) copy.

    Raises ValueError when the sparse part is not (m, n) or the bias not (m,).
    """
    if sparse is not None:
        if sparse.shape != (m, n):
            raise ValueError(f"sparse part must be ({m}, {n}), got {sparse.shape}")
        if sparse.nnz == 0:
            sparse = None
    module.sparse = sparse
    if bias is not None:
        if bias.shape != (m,):
            raise ValueError(f"bias must be ({m},), got {tuple(bias.shape)}")
        module.bias = nn.Parameter(bias.detach().clone())
    else:
        module.register_parameter("bias", None)


def sparse_from_state(config: dict[str, Any], tensors: dict[str, Tensor]) -> CompactSparse | None:
    """The sparse part of a pair from its ``config()`` and its tensors (``sparse.*`` names)."""
    sc = config.get("sparse")
    if sc is None:
        return None
    sub = {k[len("sparse."):]: v for k, v in tensors.items() if k.startswith("sparse.")}
    return sparse_from_config(sc, sub)


def factors_or_none(U: Tensor | None, V: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(U, V), or (None, None) for rank 0 (no factors, or U with no columns).

    Raises:
        ValueError: only one of U, V given.
    """
    if (U is None) != (V is None):
        raise ValueError("U and V must both be given or both be None")
    if U is not None and U.shape[1] == 0:
        return None, None
    return U, V


def check_left_factor(U: Tensor, m: int, g: int) -> None:
    """U must be (m, g*j); ValueError otherwise."""
    if U.dim() != 2 or U.shape[0] != m or U.shape[1] % g:
        raise ValueError(f"U must be (m={m}, g*j) with g={g}, got {tuple(U.shape)}")


def require_decomposition(dec: Any) -> None:
    """TypeError unless ``dec`` is a Decomposition."""
    if not isinstance(dec, Decomposition):
        raise TypeError(f"dec must be a Decomposition, got {type(dec).__name__}")


def decomposition_tensors(dec: Decomposition, like: Tensor | None, m: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(U, V, S) of a Decomposition as tensors (cast to ``like``, or to U's dtype when
    ``like`` is None).

    Raises:
        ValueError: S is not (m, n).
    """
    U = as_tensor(dec.U, like=like, name="dec.U")
    like = U if like is None else like
    V = as_tensor(dec.V, like=like, name="dec.V")
    S = as_tensor(dec.S, like=like, name="dec.S")
    if S.shape != (m, n):
        raise ValueError(f"dec.S must be ({m}, {n}), got {tuple(S.shape)}")
    return U, V, S


class PairBase(nn.Module):
    """What LowRankSparseLinear and LowRankSparseConv2d share.

    Subclasses set ``U``, ``V`` (or register them as None), ``bias``, ``sparse``,
    ``slices`` and ``structure``, and define:

    * ``matrix_shape`` -> (m, n) of the weight matrix, and ``check_right_factor(V, gj)``
      (V in the class's stored layout), used by :meth:`set_parts`;
    * ``geometry_config()`` -> the class's own constructor fields of ``config()``;
    * ``from_config``, using :meth:`state_kwargs` for the shared keywords;
    * ``low_rank_path(x)`` (the low-rank product plus bias), ``sparse_path(out, x)``,
      ``zero_output(x)`` and ``bias_term()`` (the bias shaped for the output), used by
      :meth:`sum_paths`;
    * ``low_rank_dense()`` -> (m, n) for slices > 1 or the conv's V layout.
    """

    U: Optional[nn.Parameter]
    V: Optional[nn.Parameter]
    bias: Optional[nn.Parameter]
    slices: int
    structure: str

    @property
    def matrix_shape(self) -> tuple[int, int]:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def set_parts(self, U: Tensor | None, V: Tensor | None, sparse: Any, bias: Tensor | None) -> None:
        """Check and register the factors (trainable copies, or both None for rank 0),
        the sparse part and the bias; ``matrix_shape``, ``slices`` and the geometry
        ``check_right_factor`` reads must be set.

        Raises:
            ValueError: shapes that do not fit (m, n) and the slices.
        """
        m, n = self.matrix_shape
        U, V = factors_or_none(U, V)
        if U is not None and V is not None:
            check_left_factor(U, m, self.slices)
            V = self.check_right_factor(V, int(U.shape[1]))
        if U is not None and V is not None:
            self.U = nn.Parameter(U.detach().clone())
            self.V = nn.Parameter(V.detach().clone())
        else:
            self.register_parameter("U", None)
            self.register_parameter("V", None)
        attach_sparse_and_bias(self, sparse, bias, m, n)

    def check_right_factor(self, V: Tensor, gj: int) -> Tensor:  # pragma: no cover - by the subclasses
        """V (of g*j rows) checked and brought to the class's stored layout."""
        raise NotImplementedError

    # ------------------------------------------------------------------ config
    def geometry_config(self) -> dict[str, Any]:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able description; with the state tensors it rebuilds the module."""
        return {
            "class": type(self).__name__,
            **self.geometry_config(),
            "rank": self.rank,
            "slices": self.slices,
            "structure": self.structure,
            "bias": self.bias is not None,
            "sparse": None if self.sparse is None else self.sparse.config(),
        }

    @staticmethod
    def state_kwargs(config: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
        """The constructor keywords every pair takes (U, V, sparse, bias, slices,
        structure) from ``config()`` and tensors named as in ``state_dict()``."""
        return {
            "U": tensors.get("U"),
            "V": tensors.get("V"),
            "sparse": sparse_from_state(config, tensors),
            "bias": tensors.get("bias"),
            "slices": int(config.get("slices", 1)),
            "structure": str(config.get("structure", "unstructured")),
        }

    # ------------------------------------------------------------------ compute
    @property
    def rank(self) -> int:
        """Rank per slice j (the rank of L when slices == 1); 0 without low-rank part."""
        return 0 if self.U is None else int(self.U.shape[1]) // self.slices

    def sum_paths(self, x: Tensor) -> Tensor:
        """Low-rank path (with the bias) + sparse path; the bias alone is added when
        there is no low-rank path; zeros (+ bias) when there is neither.  A module
        that :func:`lowrank_sparse.nn.execution.plan_execution` put in the "dense"
        form runs one product with its merged weight instead (in eval mode)."""
        merged = getattr(self, "_merged_weight", None)
        if merged is not None and not self.training:
            return self.dense_product(x, merged)
        out: Tensor | None = None
        if self.U is not None:
            out = self.low_rank_path(x)
        if self.sparse is not None:
            out = self.sparse_path(out, x)
            if self.U is None and self.bias is not None:
                out = out + self.bias_term()
        if out is None:
            out = self.zero_output(x)
            if self.bias is not None:
                out = out + self.bias_term()
        return out

    def low_rank_path(self, x: Tensor) -> Tensor:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def dense_product(self, x: Tensor, weight: Tensor) -> Tensor:  # pragma: no cover - subclasses
        """The equivalent dense layer's output for the (m, n) weight ``weight`` (+ bias)."""
        raise NotImplementedError

    def sparse_path(self, out: Tensor | None, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def zero_output(self, x: Tensor) -> Tensor:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def bias_term(self) -> Tensor:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    def zero_matrix(self) -> Tensor:
        """(m, n) zeros with the dtype / device of the module's values (float32 CPU when it
        stores none): L of a rank-0 pair."""
        m, n = self.matrix_shape
        ref = self.bias if self.bias is not None else (self.sparse.values if self.sparse is not None else None)
        return torch.zeros(m, n) if ref is None else ref.new_zeros(m, n)

    def low_rank_dense(self) -> Tensor:  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    # ------------------------------------------------------------------ counts
    def to_dense_weight(self) -> Tensor:
        """(m, n) U @ V + S: the weight of the equivalent dense layer (for a conv,
        ``.view(m, C, kh, kw)`` is the kernel)."""
        W = self.low_rank_dense()
        if self.sparse is not None:
            W = W + self.sparse.to_dense()
        return W

    def num_params(self) -> int:
        """Stored values: factors (zero blocks of V excluded) + sparse values + bias."""
        n = sum(int(p.numel()) for p in (self.U, self.V, self.bias) if p is not None)
        return n + (0 if self.sparse is None else int(self.sparse.nnz))

    def num_index_bytes(self, packed: bool = False) -> int:
        """Bytes of index storage of the sparse part: in memory (int32 indices) by
        default, or as :func:`lowrank_sparse.save` stores them (``packed=True``)."""
        return 0 if self.sparse is None else int(self.sparse.num_index_bytes(packed=packed))

    def macs_per_position(self) -> int:
        """MACs of one input vector (linear) / one output pixel (conv):
        j*n + m*g*j + (stored values of S)."""
        m, n = self.matrix_shape
        lr = 0 if self.U is None else self.rank * n + m * int(self.U.shape[1])
        return lr + (0 if self.sparse is None else self.sparse.macs_per_position())
