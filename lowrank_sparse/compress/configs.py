"""One config dataclass per compression method: what the method needs per layer.

Each holds the explicit per-layer sizes it uses (``rank`` / ``density``, a scalar or a
{fnmatch pattern: value} dict, see :mod:`lowrank_sparse.compress.plan`), the structure
of its sparse part if it has one, and the :class:`~lowrank_sparse.SolverConfig` of its
per-layer solves.  With a budget target the sizes come from the allocator instead and
``rank`` / ``density`` must stay None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Union

from .._overrides import field_names
from ..solve.config import SolverConfig
from ..structure import Structure

__all__ = ["DensitySpec", "LowRankSparseConfig", "MethodConfig", "RankOnlyConfig", "RankSpec", "SparseOnlyConfig",
           "config_fields"]

#: None (no low-rank part), an int rank, a fraction of full rank in [0, 1], or {pattern: either}.
RankSpec = Union[None, int, float, Mapping[str, Union[int, float]]]
#: None (no sparse part), a fraction of the weight's entries in [0, 1], or {pattern: fraction}.
DensitySpec = Union[None, float, Mapping[str, float]]


@dataclass(frozen=True)
class LowRankSparseConfig:
    """W ~ U V + S by the activation-aware ADMM (:func:`lowrank_sparse.decompose`).

    Attributes:
        rank: explicit rank of L per layer (see :data:`RankSpec`), or None.
        density: explicit density of S per layer (see :data:`DensitySpec`), or None.
        structure: sparsity structure of S ("unstructured", "row", "column",
            "channel", "N:M" or a Structure).
        solver: settings of the ADMM solves.
    """

    method: ClassVar[str] = "lowrank_sparse"
    rank: RankSpec = None
    density: DensitySpec = None
    structure: Union[str, Structure] = "unstructured"
    solver: SolverConfig = field(default_factory=SolverConfig)


@dataclass(frozen=True)
class RankOnlyConfig:
    """W ~ U V alone: activation-aware truncated SVD (:func:`lowrank_sparse.baselines.rank_only`).

    Attributes:
        rank: explicit rank per layer (see :data:`RankSpec`), or None.
        solver: settings of the solves (the ADMM runs for nonlinear activations).
    """

    method: ClassVar[str] = "rank_only"
    rank: RankSpec = None
    solver: SolverConfig = field(default_factory=SolverConfig)


@dataclass(frozen=True)
class SparseOnlyConfig:
    """W ~ S alone: activation-aware magnitude pruning with a least-squares refit
    (:func:`lowrank_sparse.baselines.sparse_only`).

    Attributes:
        density: explicit density per layer (see :data:`DensitySpec`), or None.
        structure: sparsity structure of S.
        solver: settings of the solves (``seed``, ``subsample`` and ``refit``, the
            least-squares refit of the kept entries on the calibration inputs, apply).
    """

    method: ClassVar[str] = "sparse_only"
    density: DensitySpec = None
    structure: Union[str, Structure] = "unstructured"
    solver: SolverConfig = field(default_factory=SolverConfig)


MethodConfig = Union[LowRankSparseConfig, RankOnlyConfig, SparseOnlyConfig]


def config_fields(config_cls: type) -> tuple[str, ...]:
    """Field names of a method config class (the ClassVar ``method`` excluded)."""
    return field_names(config_cls)
