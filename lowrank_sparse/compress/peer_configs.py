"""Config dataclasses of the peer methods (:mod:`lowrank_sparse.peers`) as compress() methods.

The peers fit each layer's linear (pre-activation) output on the calibration inputs
(their Gram matrix; a nonlinear layer's input subsample).  Their sparse patterns are
per output row ("unstructured" here: every row keeps the same fraction) or N:M.
``rank`` / ``density`` are explicit per-layer sizes as in
:mod:`lowrank_sparse.compress.configs` (None with a budget target).  ``solver`` is
there for compress()'s shared settings: only its ``seed`` is used (the calibration
subsample and the allocator's sampled estimates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

from ..solve.config import SolverConfig
from ..structure import Structure, parse_structure
from .configs import DensitySpec, RankSpec

__all__ = ["OATSConfig", "SVDLLMConfig", "SparseGPTConfig", "WandaConfig", "peer_pattern"]


def peer_pattern(structure: Union[str, Structure], method: str) -> str:
    """The peer function's ``pattern`` of a structure: "unstructured" -> "per_row",
    N:M -> "N:M".

    Raises:
        ValueError: a structure the method does not take.
    """
    st = parse_structure(structure)
    if st.kind == "unstructured":
        return "per_row"
    if st.kind == "nm":
        return st.name
    raise ValueError(f"method {method!r} takes structure 'unstructured' (per output row) or 'N:M', "
                     f"got {st.name!r}")


@dataclass(frozen=True)
class WandaConfig:
    """Wanda (:func:`lowrank_sparse.peers.wanda`): keep |W_ij| ||x_j||'s largest per row.

    Attributes:
        density: explicit density per layer (see :data:`DensitySpec`), or None.
        structure: "unstructured" (per row) or "N:M".
    """

    method: ClassVar[str] = "wanda"
    density: DensitySpec = None
    structure: Union[str, Structure] = "unstructured"
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        peer_pattern(self.structure, self.method)


@dataclass(frozen=True)
class SparseGPTConfig:
    """SparseGPT (:func:`lowrank_sparse.peers.sparsegpt`): OBS-updated one-shot pruning.

    Attributes:
        density: explicit density per layer (see :data:`DensitySpec`), or None.
        structure: "unstructured" (per row, per block) or "N:M".
        block_size: columns per block (mask selection, lazy updates).
        damp: dampening of the Hessian, a fraction of its mean diagonal.
    """

    method: ClassVar[str] = "sparsegpt"
    density: DensitySpec = None
    structure: Union[str, Structure] = "unstructured"
    block_size: int = 128
    damp: float = 0.01
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        peer_pattern(self.structure, self.method)
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        if not isinstance(self.damp, (int, float)) or not self.damp >= 0 or self.damp == float("inf"):
            raise ValueError(f"damp must be a finite number >= 0, got {self.damp!r}")


@dataclass(frozen=True)
class SVDLLMConfig:
    """SVD-LLM (:func:`lowrank_sparse.peers.whitened_svd`): truncated SVD of the
    whitened weight.

    Attributes:
        rank: explicit rank per layer (see :data:`RankSpec`), or None.
    """

    method: ClassVar[str] = "svd_llm"
    rank: RankSpec = None
    solver: SolverConfig = field(default_factory=SolverConfig)


@dataclass(frozen=True)
class OATSConfig:
    """OATS (:func:`lowrank_sparse.peers.oats`): alternating truncated SVD and hard
    thresholding of the input-norm-scaled weight.

    Attributes:
        rank, density: explicit sizes per layer, or None.
        structure: "unstructured" (per row) or "N:M".
        iters: alternations.
    """

    method: ClassVar[str] = "oats"
    rank: RankSpec = None
    density: DensitySpec = None
    structure: Union[str, Structure] = "unstructured"
    iters: int = 40
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        peer_pattern(self.structure, self.method)
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"iters must be a positive int, got {self.iters!r}")
