"""The activation-aware mode of :func:`lowrank_sparse.decompose` (nonlinear activation
with calibration inputs X; docs/method.md, "Activation-aware refinement").

1. Split the calibration columns: the last 1/8 (contiguous, so that tokens or patches
   of one sequence / image stay together) are held out for early stopping; the rest
   fit.  Fewer than :data:`MIN_HELDOUT` * 8 columns: no split.
2. Two data-aware starts on all calibration columns, both solving the identity-activation
   problem: the library's Gram-mode decompose (exactly what ``decompose`` returns for
   ``gram=X X^T / N`` with the same settings: the data-aware answer) and an OATS-style
   alternation on the input-norm-scaled weight (same structure and budget; slices = 1
   only).  The one with the lower post-activation error on all columns is the start.
3. :func:`lowrank_sparse.solve.refine.refine`: L-BFGS on the post-activation objective
   with S's support fixed, the held-out iterate kept.  The result is never worse than
   the start on the calibration objective (all columns used); checked at the end, the
   start is returned otherwise.

This is decompose's default for a nonlinear activation (``refine=None`` / True);
``refine=False`` runs the nonlinear ADMM instead.  Reaching ``max_iter`` is not an
error and does not warn (as for the ADMM): ``info.converged`` is False and
``info.extra["stop"]`` is "max_iter"; the best held-out iterate is returned.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Optional

import numpy as np
import torch

from ._validate import Array, Prepared, compute_dtype
from .ops import torch_ops
from .peers.oats import oats_scaled
from .solve.config import SolverConfig
from .solve.refine import RefineResult, post_activation_error, refine
from .solve.result import Decomposition, SolveInfo

#: Alternations of the OATS-style start (warm-started truncated SVD).
OATS_ITER = 25
#: Fraction of the calibration columns held out for early stopping.
HELDOUT_FRACTION = 1 / 8
#: Smallest held-out part; with fewer columns the fitting objective stops the loop.
MIN_HELDOUT = 8
#: Stopping rule of the refinement: relative improvement of the best held-out
#: objective over the last PATIENCE iterations below IMPROVE_TOL.
PATIENCE = 5
IMPROVE_TOL = 2e-3
#: Damping of the refinement, relative to the mean input energy (solve/refine.py): holds
#: back steps along inputs that the calibration data barely excite.
RIDGE = 1e-3
#: Below this many multiply-adds per (m, n, N) product the refinement runs torch on one
#: thread when ``threads`` is not given: for small layers the intra-op threads cost
#: more than they save, and on a shared machine far more (a 128x256 layer with 224
#: columns on 2 busy cores: 10.8 s on 2 threads, 0.13 s on 1).
SMALL_WORK = 1 << 27

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def split_columns(X: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(fitting columns, held-out columns or None): the last HELDOUT_FRACTION of X."""
    N = X.shape[1]
    nh = int(N * HELDOUT_FRACTION)
    if nh < MIN_HELDOUT:
        return X, None
    return X[:, : N - nh].contiguous(), X[:, N - nh :].contiguous()


#: gram_solve(W0, G) -> Decomposition: the caller's identity-activation decompose on the
#: Gram G (n, n) with its settings (decompose passes itself; this module does not import it)
GramSolve = Callable[[torch.Tensor, torch.Tensor], Decomposition]


def gram_start(W0: torch.Tensor, X: torch.Tensor, gram_solve: GramSolve) -> Factors:
    """The identity-activation decompose on G = X X^T / N (ADMM + support refit), with
    the caller's settings: the answer ``decompose(W, gram=G)`` gives."""
    G = (X @ X.mT) / X.shape[1]
    d = gram_solve(W0, G)
    return d.U, d.V, d.S


def oats_start(W0: torch.Tensor, Xf: torch.Tensor, pr: Prepared) -> Factors:
    """OATS-style alternation in the input-norm-scaled space, in decompose's structure."""
    spec = pr.spec
    dn = torch.linalg.vector_norm(Xf, dim=1)
    dn = torch.clamp(dn, min=max(float(dn.max()) * 1e-6, 1e-30))
    if spec.has_sparse:
        project = lambda B: torch_ops.project(B, spec.k, spec.structure)  # noqa: E731
    else:
        project = torch.zeros_like
    U, V, S, _ = oats_scaled(W0 * dn, spec.rank, project, OATS_ITER, exact_svd=False)
    return U, V / dn, S / dn


def _starts(W0: torch.Tensor, X: torch.Tensor, pr: Prepared,
            gram_solve: GramSolve) -> tuple[str, Factors, dict[str, float]]:
    spec = pr.spec
    cands = {"gram": gram_start(W0, X, gram_solve)}
    if spec.slices == 1:
        cands["oats"] = oats_start(W0, X, pr)
    errs = {k: post_activation_error(U @ V + S, W0, X, pr.bias, spec.activation, spec.negative_slope)
            for k, (U, V, S) in cands.items()}
    name = min(errs, key=lambda k: (errs[k], k != "gram"))
    return name, cands[name], errs


def refine_threads(threads: Optional[int], m: int, n: int, N: int) -> Optional[int]:
    """torch threads of the refinement: ``threads`` when given, 1 for small problems
    (m n N < SMALL_WORK), else None (torch's current setting)."""
    if threads is not None:
        return int(threads)
    return 1 if m * n * N < SMALL_WORK else None


@contextmanager
def _torch_threads(n: Optional[int]):
    """torch runs on ``n`` threads inside the block (None: unchanged)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def decompose_activation(W: Array, pr: Prepared, cfg: SolverConfig, gram_solve: GramSolve) -> Decomposition:
    """decompose() for a nonlinear activation (``pr.spec.mode == "nonlinear"``, not
    relaxed); see the module docstring.  ``info``: iterations and converged of the
    refinement (L-BFGS), path "refine", objective = its post-activation relative error
    on the fitting columns per iteration (entry 0: the start), extra: start,
    start_errors (all calibration columns), heldout history, best_iteration, stop (the rule that ended the loop, "max_iter" when it ran out),
    error (all calibration columns), error_start, samples, heldout_samples, ridge,
    threads (torch threads used, None: the caller's)."""
    spec = pr.spec
    t0 = time.perf_counter()
    nthreads = (refine_threads(cfg.threads, spec.m, spec.n, int(pr.X.shape[1]))
                if pr.X.device.type == "cpu" else None)
    with torch.no_grad(), _torch_threads(nthreads):
        W0 = pr.W.detach().to(compute_dtype(pr.W)).contiguous()
        X = pr.X.contiguous()
        Xf, Xh = split_columns(X)
        name, (U, V, S), errs = _starts(W0, X, pr, gram_solve)
        U, V, S = U.to(W0.dtype), V.to(W0.dtype), S.to(W0.dtype)
        res = refine(W0, U, V, S, Xf, Xh, pr.bias, spec.activation, spec.negative_slope,
                     slices=spec.slices, max_iter=cfg.max_iter, patience=PATIENCE,
                     improve_tol=IMPROVE_TOL, ridge=RIDGE)
        e_start = post_activation_error(U @ V + S, W0, X, pr.bias, spec.activation, spec.negative_slope)
        e_ref = post_activation_error(res.U @ res.V + res.S, W0, X, pr.bias, spec.activation,
                                      spec.negative_slope)
        if not e_ref <= e_start:  # by construction only rounding can do this (nothing improved)
            res = RefineResult(U, V, S, res.iterations, res.converged, res.fit, res.held, 0,
                               res.evaluations, res.stop)
            e_ref = e_start
    extra: dict[str, Any] = {
        "method": "activation-aware refinement", "start": name, "start_errors": errs,
        "heldout": res.held, "best_iteration": res.best,
        "stop": res.stop, "error": e_ref, "error_start": e_start, "ridge": RIDGE,
        "threads": nthreads,
        "samples": int(X.shape[1]), "samples_given": pr.n_samples,
        "heldout_samples": 0 if Xh is None else int(Xh.shape[1]), "refit": False,
    }
    info = SolveInfo(iterations=res.iterations, converged=res.converged,
                     seconds=time.perf_counter() - t0, objective=list(res.fit),
                     backend=pr.backend, extra=extra, path="refine")
    if cfg.progress:
        print(f"decompose {spec.m}x{spec.n} rank={spec.rank} k={spec.k} {spec.structure.name} "
              f"[nonlinear/{spec.activation}] refine start={name}: {res.iterations} it, "
              f"stop={res.stop}, error={e_start:.4g}->{e_ref:.4g}, "
              f"{info.seconds:.2f}s", file=sys.stderr)
    return Decomposition(U=_out(res.U, W), V=_out(res.V, W), S=_out(res.S, W),
                         structure=spec.structure, info=info, slices=spec.slices)


def _out(t: torch.Tensor, W: Array) -> Array:
    if isinstance(W, np.ndarray):
        return t.detach().cpu().numpy().astype(W.dtype, copy=False)
    return t.to(dtype=W.dtype, device=W.device)
