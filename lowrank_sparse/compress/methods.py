"""The method registry: method name -> config class + the handler that solves one layer.

A handler takes a :class:`LayerProblem` (the BatchNorm-folded weight and the data of
one layer, at the sizes the plan chose) and the method's config, and returns a
:class:`~lowrank_sparse.solve.result.Decomposition`.  :func:`register_method` adds a
method; :func:`get_method` / :func:`method_of_config` look one up.  The three built-in
methods are "lowrank_sparse", "rank_only" and "sparse_only".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..calibrate import LayerStats
from ..structure import Structure
from .configs import LowRankSparseConfig, RankOnlyConfig, SparseOnlyConfig, config_fields

__all__ = ["LayerProblem", "Method", "get_method", "layer_problem", "method_names", "method_of_config",
           "register_method", "solve_layer"]


@dataclass(frozen=True)
class LayerProblem:
    """One layer's solve.

    Attributes:
        weight: (m, n) weight to fit, BatchNorm scale folded in.
        bias: (m,) folded bias, or None.
        rank, density, slices: the sizes the plan chose.
        structure: sparsity structure of S.
        X: (n, s) input subsample for nonlinear activations, else None.
        gram: (n, n) input Gram matrix when X is None.
        activation: None (fitted as linear) or the solver's activation name.
        negative_slope: leaky ReLU slope (0.01 for the other activations).
        block: kh*kw of a conv (the "channel" structure's group), 1 for linear.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    rank: int
    density: float
    slices: int
    structure: Structure
    X: Optional[torch.Tensor]
    gram: Optional[torch.Tensor]
    activation: Optional[str]
    negative_slope: float = 0.01
    block: int = 1


def layer_problem(weight: torch.Tensor, bias: Optional[torch.Tensor], stats: LayerStats, rank: int,
                  density: float, slices: int, structure: Structure) -> LayerProblem:
    """The problem of one layer from its folded weight / bias and its statistics: the
    subsample (in the weight's dtype) for nonlinear activations, the Gram matrix otherwise."""
    info = stats.activation
    act = info.name if info.nonlinear else None
    X = stats.sample.to(weight.dtype) if (info.nonlinear and stats.sample is not None) else None
    gram = None if X is not None else stats.gram
    slope = info.negative_slope if act == "leaky_relu" else 0.01
    return LayerProblem(weight, bias, int(rank), float(density), int(slices), structure, X, gram, act, slope,
                        stats.block)


Handler = Callable[[LayerProblem, Any], Any]


@dataclass(frozen=True)
class Method:
    """A registered compression method.

    Attributes:
        name: the ``method=`` name.
        config_cls: its config dataclass (fields ``rank`` / ``density`` say which
            explicit sizes it takes).
        solve: handler(problem, config) -> Decomposition.
        allocation_mode: the ``mode`` of :func:`lowrank_sparse.budget.allocate`.
        solver_split: with a budget, the allocator picks each layer's rank / sparse
            split by running this method's solver (its ``error_fn``).
        gated_objective: fits a gated MLP's gate / up projections on their error in
            the product (:mod:`lowrank_sparse.calibrate.gated`); False: on their own
            input Gram (the peers, as their papers do).
    """

    name: str
    config_cls: type
    solve: Handler
    allocation_mode: str
    solver_split: bool = False
    gated_objective: bool = False

    @property
    def has_rank(self) -> bool:
        return "rank" in config_fields(self.config_cls)

    @property
    def has_density(self) -> bool:
        return "density" in config_fields(self.config_cls)


_REGISTRY: dict[str, Method] = {}


def register_method(name: str, config_cls: type, solve: Handler, *, allocation_mode: str,
                    solver_split: bool = False, gated_objective: bool = False) -> Method:
    """Add (or replace) a method; returns its record (see :class:`Method`)."""
    method = Method(name, config_cls, solve, allocation_mode, solver_split, gated_objective)
    _REGISTRY[name] = method
    return method


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}") from None


def method_of_config(config: Any) -> Method:
    """The method whose config class ``config`` is an instance of.

    Raises:
        TypeError: not a registered method config.
    """
    for method in _REGISTRY.values():
        if type(config) is method.config_cls:
            return method
    known = ", ".join(m.config_cls.__name__ for m in _REGISTRY.values())
    raise TypeError(f"config must be a method config ({known}), got {type(config).__name__}")


def solve_layer(config: Any, problem: LayerProblem) -> Any:
    """Solve one layer with the method of ``config``."""
    return method_of_config(config).solve(problem, config)


# ------------------------------------------------------------------------ handlers

def _solve_lowrank_sparse(p: LayerProblem, config: LowRankSparseConfig) -> Any:
    from ..decomposition import decompose

    return decompose(p.weight, p.rank, p.density, p.structure, X=p.X, gram=p.gram, bias=p.bias,
                     activation=p.activation, negative_slope=p.negative_slope, block=p.block, slices=p.slices,
                     config=config.solver)


def _solve_rank_only(p: LayerProblem, config: RankOnlyConfig) -> Any:
    from .. import baselines

    return baselines.rank_only(p.weight, p.rank, X=p.X, gram=p.gram, bias=p.bias, activation=p.activation,
                               negative_slope=p.negative_slope, slices=p.slices,
                               config=config.solver)


def _solve_sparse_only(p: LayerProblem, config: SparseOnlyConfig) -> Any:
    from .. import baselines

    return baselines.sparse_only(p.weight, p.density, p.structure, X=p.X, gram=p.gram, bias=p.bias,
                                 activation=p.activation, block=p.block,
                                 config=config.solver)


register_method("lowrank_sparse", LowRankSparseConfig, _solve_lowrank_sparse, allocation_mode="lowrank_sparse",
                solver_split=True, gated_objective=True)
register_method("rank_only", RankOnlyConfig, _solve_rank_only, allocation_mode="rank_only", gated_objective=True)
register_method("sparse_only", SparseOnlyConfig, _solve_sparse_only, allocation_mode="sparse_only",
                gated_objective=True)
