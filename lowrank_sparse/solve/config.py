"""SolverConfig: the per-layer solver's settings, one object shared by
:func:`lowrank_sparse.decompose`, the baselines (:mod:`lowrank_sparse.baselines`),
argument validation and :func:`lowrank_sparse.compress`.

Every field can also be given as a keyword of those functions (a shortcut that
overrides the config's field), so ``decompose(W, 8, 0.1, max_iter=50)`` and
``decompose(W, 8, 0.1, config=SolverConfig(max_iter=50))`` are the same call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .._overrides import field_names as _field_names, overridden, resolve_config


@dataclass(frozen=True)
class SolverConfig:
    """Settings of one per-layer solve (the problem itself -- W, rank, density,
    structure, data, activation -- is given separately).

    Attributes:
        backend: "auto" (native C++ core for CPU data, torch for CUDA), "native" or
            "torch".
        max_iter: iteration cap (ADMM iterations; the activation-aware refinement:
            L-BFGS iterations, its Gram-mode start at most 60 ADMM iterations;
            baselines: refinement steps).
        tol: tolerance on the relative primal and dual residuals.
        seed: seeds the initial subspace and the data subsample.
        subsample: the nonlinear (activation-aware) mode uses at most this many
            columns of the calibration inputs X (seeded choice).
        relaxed: solve the convex relaxation F + lam_nuclear ||L||_* + lam_sparse R(S)
            instead of the rank / sparsity-constrained problem.
        lam_nuclear, lam_sparse: relaxation weights (None: defaults scaled to W).
        threads: threads of the native core (None: torch.get_num_threads()); the
            activation-aware refinement runs its torch operations on this many threads.
        progress: print a one-line summary per solve to stderr.
        refine: which solver a nonlinear activation (relu, leaky_relu, gelu, silu,
            tanh, with calibration inputs X) gets.  None (default) or True: the
            activation-aware refinement (a Gram-mode and an OATS-style start on the
            fitting columns, each refined by L-BFGS on the post-activation objective
            with S's support fixed and held-out early stopping, the one better on the
            held-out columns kept; docs/method.md, section 6); False: the
            nonlinear ADMM.  The relaxed problem always runs the ADMM (None), and
            True with ``relaxed`` is an error.  No effect on the identity activation.
        refit: least-squares refit of S's values on its support after the ADMM
            (weight and Gram modes; never increases the error).  Gram mode: about
            m k^3 / 3 flops for k kept entries per row, the dominant cost of wide
            layers at decoder scale for about 1 % of the error (docs/scaling.md);
            False skips it.
        gram_shrinkage: a in [0, 1]: the data-aware objectives use the Gram matrix
            shrunk towards its diagonal, (1 - a) G + a diag(G) (input energies kept,
            cross-correlations scaled by 1 - a), a guard against fitting the
            calibration tokens' correlations.  On a real all-MiniLM-L6-v2 FFN
            up-projection at 50 % of its parameters, held-out post-GELU error: 512
            calibration tokens 0.297 (a = 0) -> 0.234 (0.1) / 0.228 (0.2); 2,048 tokens
            0.2115 -> 0.2050 / 0.2043 (docs/method.md, section 6).  0 (default): G as
            given.  Applies to the Gram mode, the activation-aware mode's Gram start and
            the sparse-only refit; the nonlinear objectives themselves use X.
    """

    backend: str = "auto"
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0
    subsample: int = 8192
    relaxed: bool = False
    lam_nuclear: Optional[float] = None
    lam_sparse: Optional[float] = None
    threads: Optional[int] = None
    progress: bool = False
    refine: Optional[bool] = None
    refit: bool = True
    gram_shrinkage: float = 0.0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return _field_names(cls)

    def with_overrides(self, **overrides: Any) -> "SolverConfig":
        """A copy with the given fields replaced; unknown names raise TypeError
        naming them (so a misspelt keyword is never silently ignored)."""
        return overridden(self, overrides, "solver")


def resolve(config: Optional[SolverConfig], overrides: dict[str, Any]) -> SolverConfig:
    """The config a call runs with: ``config`` (default SolverConfig()) with the
    keyword shortcuts that are not None applied (None means "not given")."""
    return resolve_config(config, SolverConfig, overrides, "config", "solver")
