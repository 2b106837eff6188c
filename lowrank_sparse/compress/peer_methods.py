"""The peer methods (:mod:`lowrank_sparse.peers`) registered as compress() methods:
"wanda", "sparsegpt", "svd_llm" and "oats".

Each handler fits the layer's linear (pre-activation) output: with the layer's input
Gram matrix (``problem.gram``), or its input subsample (``problem.X``) where the
calibration kept one instead (layers followed by a nonlinear activation).  The bias
and the activation are left as they are.
"""

from __future__ import annotations

from typing import Any

from .. import peers
from .methods import LayerProblem, register_method
from .peer_configs import OATSConfig, SparseGPTConfig, SVDLLMConfig, WandaConfig, peer_pattern

__all__ = ["PEER_METHODS"]


def _data(p: LayerProblem, method: str) -> dict[str, Any]:
    """{"X": subsample} or {"gram": Gram matrix} of the problem; slices must be 1."""
    if p.slices != 1:
        raise ValueError(f"method {method!r} fits one low-rank factor per layer, got slices={p.slices}; "
                         f"use allocation='uniform' or 'enc' (ALDS slices conv layers)")
    return {"X": p.X} if p.X is not None else {"gram": p.gram}


def _solve_wanda(p: LayerProblem, config: WandaConfig) -> Any:
    return peers.wanda(p.weight, p.density, **_data(p, "wanda"), pattern=peer_pattern(p.structure, "wanda"))


def _solve_sparsegpt(p: LayerProblem, config: SparseGPTConfig) -> Any:
    return peers.sparsegpt(p.weight, p.density, **_data(p, "sparsegpt"),
                           pattern=peer_pattern(p.structure, "sparsegpt"), block_size=config.block_size,
                           damp=config.damp)


def _solve_svd_llm(p: LayerProblem, config: SVDLLMConfig) -> Any:
    return peers.whitened_svd(p.weight, p.rank, **_data(p, "svd_llm"))


def _solve_oats(p: LayerProblem, config: OATSConfig) -> Any:
    return peers.oats(p.weight, p.rank, p.density, **_data(p, "oats"), pattern=peer_pattern(p.structure, "oats"),
                      iters=config.iters)


#: name -> (config class, handler, allocation mode)
PEER_METHODS = {
    "wanda": (WandaConfig, _solve_wanda, "sparse_only"),
    "sparsegpt": (SparseGPTConfig, _solve_sparsegpt, "sparse_only"),
    "svd_llm": (SVDLLMConfig, _solve_svd_llm, "rank_only"),
    "oats": (OATSConfig, _solve_oats, "lowrank_sparse"),
}

for _name, (_cls, _solve, _mode) in PEER_METHODS.items():
    register_method(_name, _cls, _solve, allocation_mode=_mode, solver_split=False)
