"""The activation-aware mode of :func:`lowrank_sparse.decompose` (nonlinear activation
with calibration inputs X; docs/method.md, "Activation-aware refinement").

1. Split the calibration columns: the last 1/8 (contiguous, so that tokens or patches
   of one sequence / image stay together) are held out; the rest fit.  Fewer than
   :data:`MIN_HELDOUT` * 8 columns: no split, and every step below uses all columns.
2. Two data-aware starts on the fitting columns, both solving the identity-activation
   problem: the library's Gram-mode decompose (what ``decompose`` returns for
   ``gram=Xf Xf^T / Nf`` with the same settings: the data-aware answer) and an
   OATS-style alternation on the input-norm-scaled weight (same structure and budget;
   slices = 1 only).
3. :func:`lowrank_sparse.solve.refine.refine` from each start: L-BFGS on the
   post-activation objective with S's support fixed, the best held-out iterate kept;
   each result is never worse than its start on the calibration objective (all
   columns; checked at the end, the start is returned otherwise).
4. The refined candidate with the lower held-out error is returned.  Neither start has
   seen the held-out columns, so the choice is made on data that no candidate was fitted
   to.  Chosen on the calibration columns instead, the Gram start wins where it only
   fits those columns' input correlations: on a real all-MiniLM-L6-v2 FFN (layer 5,
   50 % of its parameters, 2,048 calibration tokens) it reaches calibration error 0.093
   against 0.100 from the OATS start, and held-out-text error 0.194 against 0.165.
   Without a split the start with the lower calibration error is refined alone.

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


def _starts(W0: torch.Tensor, X: torch.Tensor, pr: Prepared, gram_solve: GramSolve) -> dict[str, Factors]:
    """The starts, fitted on the columns ``X``: "gram" always, "oats" for slices = 1."""
    cands = {"gram": gram_start(W0, X, gram_solve)}
    if pr.spec.slices == 1:
        cands["oats"] = oats_start(W0, X, pr)
    return {k: tuple(t.to(W0.dtype) for t in f) for k, f in cands.items()}


def _refined(W0: torch.Tensor, start: Factors, e_start: float, X: torch.Tensor, Xf: torch.Tensor,
             Xh: Optional[torch.Tensor], pr: Prepared, cfg: SolverConfig) -> tuple[RefineResult, float]:
    """(refinement of ``start``, its error on all columns X): the start itself, at its
    error ``e_start`` on X, when the refinement did not lower it (only rounding can)."""
    spec = pr.spec
    U, V, S = start
    res = refine(W0, U, V, S, Xf, Xh, pr.bias, spec.activation, spec.negative_slope,
                 slices=spec.slices, max_iter=cfg.max_iter, patience=PATIENCE,
                 improve_tol=IMPROVE_TOL, ridge=RIDGE)
    e_ref = post_activation_error(res.U @ res.V + res.S, W0, X, pr.bias, spec.activation, spec.negative_slope)
    if not e_ref <= e_start:
        res = RefineResult(U, V, S, res.iterations, res.converged, res.fit, res.held, 0, res.evaluations, res.stop)
        e_ref = e_start
    return res, e_ref


def _choose(W0: torch.Tensor, X: torch.Tensor, Xf: torch.Tensor, Xh: Optional[torch.Tensor], pr: Prepared,
            cfg: SolverConfig, gram_solve: GramSolve) -> tuple[str, RefineResult, float, float, dict[str, Any]]:
    """Steps 2-4 of the module docstring: (chosen start, its refinement, error on X of
    the result and of its start, the record of every candidate for ``info.extra``)."""
    spec = pr.spec
    err = lambda M, Z: post_activation_error(M, W0, Z, pr.bias, spec.activation, spec.negative_slope)  # noqa: E731
    starts = _starts(W0, X if Xh is None else Xf, pr, gram_solve)
    start_errors = {k: err(U @ V + S, X) for k, (U, V, S) in starts.items()}
    if Xh is None:  # nothing held out: refine the start that fits the calibration columns best
        name = min(start_errors, key=lambda k: (start_errors[k], k != "gram"))
        res, e_ref = _refined(W0, starts[name], start_errors[name], X, Xf, Xh, pr, cfg)
        return name, res, e_ref, start_errors[name], {"start_errors": start_errors, "selection": "calibration"}
    out, held = {}, {}
    for k, f in starts.items():
        out[k] = _refined(W0, f, start_errors[k], X, Xf, Xh, pr, cfg)
        held[k] = err(out[k][0].U @ out[k][0].V + out[k][0].S, Xh)
    name = min(held, key=lambda k: (held[k], k != "gram"))
    res, e_ref = out[name]
    record = {"start_errors": start_errors, "selection": "held-out", "heldout_errors": held,
              "refined_errors": {k: v[1] for k, v in out.items()},
              "refine_iterations": {k: v[0].iterations for k, v in out.items()}}
    return name, res, e_ref, start_errors[name], record


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
    on the fitting columns per iteration (entry 0: the start).  extra: start (the
    chosen one), selection ("held-out" or "calibration": what chose it), start_errors
    (each start's error on all calibration columns), with a held-out part also
    heldout_errors / refined_errors / refine_iterations (each refined candidate's error
    on the held-out / all columns, its iterations); the chosen refinement's heldout
    history, best_iteration and stop (the rule that ended its loop, "max_iter" when it
    ran out); error (all calibration columns), error_start, samples, heldout_samples,
    ridge, threads (torch threads used, None: the caller's)."""
    spec = pr.spec
    t0 = time.perf_counter()
    nthreads = (refine_threads(cfg.threads, spec.m, spec.n, int(pr.X.shape[1]))
                if pr.X.device.type == "cpu" else None)
    with torch.no_grad(), _torch_threads(nthreads):
        W0 = pr.W.detach().to(compute_dtype(pr.W)).contiguous()
        X = pr.X.contiguous()
        Xf, Xh = split_columns(X)
        name, res, e_ref, e_start, record = _choose(W0, X, Xf, Xh, pr, cfg, gram_solve)
    extra: dict[str, Any] = {
        "method": "activation-aware refinement", "start": name, **record,
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
