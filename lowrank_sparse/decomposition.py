"""decompose(W, rank, density, ...): fit W ~ L + S for one layer.

Identity activation (weight or Gram metric) and the relaxed problem: ADMM; a
nonlinear activation with calibration inputs: the activation-aware refinement
(lowrank_sparse.activation_aware) unless ``refine=False`` asks for the nonlinear
ADMM.  See docs/method.md for the derivation.  The ADMM runs in the C++ core
("native", CPU tensors / numpy) or in pure torch ("torch", CPU or CUDA); both run
the same iterations from the same seeded start.  ``info.path`` says which ran.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import numpy as np
import torch

from ._validate import AdmmSpec, Array, Prepared, compute_dtype, initial_subspace, prepare
from .activation_aware import decompose_activation
from .solve.config import SolverConfig, resolve
from .solve.refit import refit_support, refit_weight_, relative_error
from .solve.result import Decomposition, SolveInfo
from .solve.torch_backend import RawSolve, solve_torch


def decompose(
    W: Array,
    rank: int,
    density: float,
    structure: Any = "unstructured",
    *,
    X: Optional[Array] = None,
    gram: Optional[Array] = None,
    bias: Optional[Array] = None,
    activation: Optional[str] = None,
    negative_slope: float = 0.01,
    block: int = 1,
    slices: int = 1,
    config: Optional[SolverConfig] = None,
    backend: Optional[str] = None,
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    seed: Optional[int] = None,
    subsample: Optional[int] = None,
    relaxed: Optional[bool] = None,
    lam_nuclear: Optional[float] = None,
    lam_sparse: Optional[float] = None,
    progress: Optional[bool] = None,
    threads: Optional[int] = None,
    refine: Optional[bool] = None,
    refit: Optional[bool] = None,
) -> Decomposition:
    """Decompose a weight W (m, n) into L + S, L = U @ V of rank <= ``rank`` (per slice),
    S structured-sparse with ``density``, keeping the layer output close on data.

    Args:
        W: (m, n) weight (conv: (out, in*kh*kw)); numpy array or torch tensor, float.
        rank: rank of L (0: sparse only).  Per slice when ``slices > 1``.
        density: fraction of W's entries S may keep, in [0, 1) (0: low rank only);
            rounded to whole groups; N:M structures keep N/M.
        structure: "unstructured", "row", "column", "channel" or "N:M" (or a Structure).
        X: (n, N) calibration inputs, samples as columns.  With activation None /
            "identity" only G = X X^T / N is used.
        gram: (n, n) G = X X^T / N, alternative to X for the identity activation.
        bias: (m,) layer bias (used by nonlinear activations).
        activation: None | "identity" | "relu" | "leaky_relu" | "gelu" | "silu" | "tanh".
        negative_slope: leaky ReLU slope.
        block: kh*kw, the column group of the "channel" structure.
        slices: ALDS channel slicing: L's columns in ``slices`` contiguous blocks, each of
            rank ``rank``; U is (m, slices*rank), V block-diagonal.
        config: the solver settings (:class:`~lowrank_sparse.SolverConfig`; default
            SolverConfig()).  Each of its fields is also a keyword of this function
            (backend, max_iter, tol, seed, subsample, relaxed, lam_nuclear, lam_sparse,
            progress, threads, refine, refit); a keyword that is given (not None) overrides the
            field.
            backend: "auto" (native for CPU, torch for CUDA), "native" or "torch";
            max_iter, tol: iteration cap (300), tolerance on the relative primal and
            dual residuals (1e-4); seed: seeds the initial right subspace and the data
            subsample; subsample: the nonlinear mode uses at most this many columns of
            X (8192); relaxed: solve the convex relaxation F + lam_nuclear ||L||_* +
            lam_sparse R(S), ``rank`` then caps the rank searched and the budget of S
            is not enforced; lam_nuclear, lam_sparse: relaxation weights (None: the
            defaults of lowrank_sparse._validate.default_lambdas); progress: print a
            one-line summary to stderr; threads: threads of the native backend
            (default torch.get_num_threads()).
        refine: the solver of a nonlinear activation.  None (default: the config's
            field, itself None) or True: the activation-aware refinement
            (lowrank_sparse.activation_aware: the better of the Gram-mode and OATS-style
            starts, then L-BFGS on the post-activation objective with S's support
            fixed and held-out early stopping; ``max_iter`` caps its L-BFGS
            iterations).  False: the nonlinear ADMM.  The relaxed problem runs the
            ADMM (True with relaxed raises ValueError); the identity activation is
            unaffected.
        refit: after the ADMM, refit S's values on its support by least squares in
            the layer's metric (True, the default; never increases the error).  In
            Gram mode this costs about m k^3 / 3 flops for k kept entries per row (a
            Cholesky factorisation per row), the dominant cost of wide layers at
            decoder scale (docs/scaling.md), where it gains about 1 % of the error:
            False skips it.

    Returns:
        Decomposition (U, V, S as the input's type, dtype and device) with ``info``:
        iterations, converged, seconds, residual and objective histories (objective =
        relative error of L + S in the layer's metric), backend, ``path`` ("admm" or
        "refine") and ``extra`` (penalty history, "samples" used in the nonlinear
        mode, "refit", "error"; the refinement's keys: see
        lowrank_sparse.activation_aware.decompose_activation).

    Raises:
        TypeError, ValueError: see lowrank_sparse._validate.prepare; ValueError for
            refine=True with relaxed=True.
    """
    cfg = resolve(config, dict(backend=backend, max_iter=max_iter, tol=tol, seed=seed,
                               subsample=subsample, relaxed=relaxed, lam_nuclear=lam_nuclear,
                               lam_sparse=lam_sparse, progress=progress, threads=threads,
                               refine=refine, refit=refit))
    _check_config(cfg)
    pr = prepare(
        W, rank, density, structure, X=X, gram=gram, bias=bias, activation=activation,
        negative_slope=negative_slope, block=block, slices=slices, backend=cfg.backend,
        max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, subsample=cfg.subsample,
        relaxed=cfg.relaxed, lam_nuclear=cfg.lam_nuclear, lam_sparse=cfg.lam_sparse,
        gram_shrinkage=cfg.gram_shrinkage,
    )
    if cfg.refine is not False and pr.spec.mode == "nonlinear" and not pr.spec.relaxed:
        quiet = cfg.with_overrides(progress=False)

        def gram_solve(W0: torch.Tensor, G: torch.Tensor) -> Decomposition:
            return decompose(W0, pr.spec.rank, density, structure, gram=G, block=block, slices=pr.spec.slices,
                             config=quiet)

        return decompose_activation(W, pr, cfg, gram_solve)
    return _decompose_admm(W, pr, cfg)


def _check_config(cfg: SolverConfig) -> None:
    """The settings decompose checks itself (prepare checks the problem)."""
    if not isinstance(cfg.refit, bool):
        raise TypeError(f"refit must be True or False, got {cfg.refit!r}")
    if cfg.refine is not None and not isinstance(cfg.refine, bool):
        raise TypeError(f"refine must be None, True or False, got {cfg.refine!r}")
    if cfg.refine and cfg.relaxed:
        raise ValueError("refine=True solves the rank / sparsity-constrained problem; "
                         "relaxed=True needs refine=False or None (the ADMM)")


def _decompose_admm(W: Array, pr: Prepared, cfg: SolverConfig) -> Decomposition:
    """The ADMM path: run the backend, refit S, package the result."""
    spec = pr.spec
    cdt = compute_dtype(pr.W)
    W0 = pr.W.detach().to(cdt).contiguous()
    V0 = initial_subspace(spec, cdt, W0.device)
    t0 = time.perf_counter()
    raw = _run_backend(pr, cfg, W0, V0)
    U, V, S = raw.U.to(W0.device), raw.V.to(W0.device), raw.S.to(W0.device)
    extra = dict(raw.extra)
    S = _refit(pr, cfg, W0, U, V, S, raw, extra)
    if spec.mode == "nonlinear":
        extra["samples"] = int(pr.X.shape[1]) if pr.X is not None else 0
        extra["samples_given"] = pr.n_samples
    seconds = time.perf_counter() - t0
    info = SolveInfo(
        iterations=raw.iterations,
        converged=raw.converged,
        seconds=seconds,
        primal_residuals=[float(v) for v in raw.primal],
        dual_residuals=[float(v) for v in raw.dual],
        objective=[float(v) for v in raw.objective],
        backend=pr.backend,
        extra=extra,
        path="admm",
    )
    if cfg.progress:
        _print_summary(pr, raw, extra, seconds)
    return _package(W, U, V, S, spec, info)


def _run_backend(pr: Prepared, cfg: SolverConfig, W0: torch.Tensor, V0: torch.Tensor) -> RawSolve:
    """The ADMM in the native core or in torch (the native core also refits S in
    weight mode)."""
    spec = pr.spec
    if pr.backend == "native":
        from .solve.native import solve_native

        refit_in_core = cfg.refit and not spec.relaxed and spec.has_sparse and spec.mode == "weight"
        return solve_native(W0, spec, V0, gram=pr.gram, X=pr.X, bias=pr.bias, threads=cfg.threads,
                            refit=refit_in_core)
    with torch.no_grad():
        return solve_torch(W0, spec, V0, gram=pr.gram, X=pr.X, bias=pr.bias)


def _refit(pr: Prepared, cfg: SolverConfig, W0: torch.Tensor, U: torch.Tensor, V: torch.Tensor,
           S: torch.Tensor, raw: RawSolve, extra: dict[str, Any]) -> torch.Tensor:
    """Exact refit of S's values on its support (weight space and identity-with-data
    modes): for fixed L and support this is the exact minimiser of F, so the error can
    only go down.  Feasibility (support, rank) is untouched.  Records "refit" and the
    errors in ``extra``; returns S (refitted or not)."""
    spec = pr.spec
    extra["refit"] = False
    if cfg.refit and not spec.relaxed and spec.has_sparse and spec.mode == "weight":
        if "refit_errors" in extra:  # done by the native core (same formula, its tiles)
            before, after = extra.pop("refit_errors")
        else:
            with torch.no_grad():
                before, after = refit_weight_(W0, U, V, S)
        extra["refit"] = True
        extra["error_before_refit"] = before
        extra["error"] = after
    elif cfg.refit and not spec.relaxed and spec.has_sparse and spec.mode == "gram":
        with torch.no_grad():
            L = U @ V
            mask = S != 0
            before = relative_error(W0, L + S, pr.gram)
            S2 = refit_support(W0 - L, mask, pr.gram)
            after = relative_error(W0, L + S2, pr.gram)
            if after <= before:
                S = S2
                extra["refit"] = True
            extra["error_before_refit"] = before
            extra["error"] = min(before, after)
    elif raw.objective:
        extra["error"] = raw.objective[-1]
    return S


def _print_summary(pr: Prepared, raw: RawSolve, extra: dict[str, Any], seconds: float) -> None:
    """The one-line progress summary on stderr."""
    spec = pr.spec
    print(
        f"decompose {spec.m}x{spec.n} rank={spec.rank} k={spec.k} {spec.structure.name} "
        f"[{spec.mode}/{spec.activation}] {pr.backend}: {raw.iterations} it, "
        f"converged={raw.converged}, error={extra.get('error', float('nan')):.4g}, "
        f"{seconds:.2f}s",
        file=sys.stderr,
    )


def _package(W: Array, U: torch.Tensor, V: torch.Tensor, S: torch.Tensor, spec: AdmmSpec,
             info: SolveInfo) -> Decomposition:
    """The Decomposition, its arrays as the input's type, dtype and device."""

    def out(t: torch.Tensor) -> Array:
        if isinstance(W, np.ndarray):
            return t.detach().cpu().numpy().astype(W.dtype, copy=False)
        return t.to(dtype=W.dtype, device=W.device)

    return Decomposition(
        U=out(U), V=out(V), S=out(S), structure=spec.structure, info=info, slices=spec.slices
    )
