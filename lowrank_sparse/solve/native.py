"""The L + S ADMM through the C++ core (lowrank_sparse._core.admm_solve).

The problem crosses as a typed ``_core.AdmmProblem`` (enums for the mode, activation
and structure kind) and the arrays as C-contiguous numpy views of the (CPU) tensors,
without copies when the tensors already are contiguous in the compute dtype.  The
loop runs with the GIL released.

Threads: the solve uses ``threads`` threads (default: torch.get_num_threads(), the
count torch itself uses), all of them the core's own.  SciPy's BLAS is limited to one
thread for the duration of the call (threadpoolctl) and the core splits its large
GEMMs into ``threads`` blocks, one single-threaded BLAS call per thread
(``gemm_threads``).  Why: the truncated SVD's QR and small SVD work on p-column
panels (p = rank + 8), where a multi-threaded OpenBLAS spends most of its time
synchronising its threads inside level-2 kernels (measured at 512x4608, rank 64, two
cores: geqrf of 4608x72 1.5 ms on one thread vs 21 ms on two, orgqr 1.3 vs 69 ms),
and an idle OpenBLAS pool spin-waits against the core's own elementwise threads.
With BLAS single-threaded nothing ever runs more threads than ``threads``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import numpy as np
import torch

from .._blas import blas_threads
from .._validate import AdmmSpec
from ..ops._boundary import core, core_structure
from .torch_backend import RawSolve


def _np(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[np.ndarray]:
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError("the native backend needs CPU tensors")
    return np.ascontiguousarray(t.detach().to(dtype).numpy())


def core_problem(spec: AdmmSpec, threads: int, refit: bool) -> Any:
    """The core's typed problem (``_core.AdmmProblem``) for ``spec``; the names of the
    mode, activation and structure kind select the enums' members."""
    c = core()
    return c.AdmmProblem(
        mode=getattr(c.Mode, spec.mode),
        activation=getattr(c.Activation, spec.activation),
        negative_slope=spec.negative_slope,
        rank=spec.rank,
        slices=spec.slices,
        p=spec.p,
        structure=core_structure(spec.structure),
        k=spec.k,
        sparse=spec.has_sparse,
        relaxed=spec.relaxed,
        lam_nuclear=spec.lam_nuclear,
        lam_sparse=spec.lam_sparse,
        max_iter=spec.max_iter,
        tol=spec.tol,
        rho0=spec.rho0,
        mu=spec.mu,
        tau=spec.tau,
        rho_growth=spec.rho_growth,
        power_iters=spec.power_iters,
        newton_steps=spec.newton_steps,
        gemm_threads=threads,
        refit_weight=refit,
    )


@contextlib.contextmanager
def _core_threads(n: int) -> Iterator[None]:
    """The core's thread count set to n inside the block (restored after)."""
    c = core()
    old = c.get_num_threads()
    c.set_num_threads(n)
    try:
        yield
    finally:
        c.set_num_threads(old)


def solve_native(
    W0: torch.Tensor,
    spec: AdmmSpec,
    V0: torch.Tensor,
    *,
    gram: Optional[torch.Tensor] = None,
    X: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    threads: Optional[int] = None,
    refit: bool = False,
) -> RawSolve:
    """Run the ADMM of ``spec`` in C++; same arguments and result as
    :func:`lowrank_sparse.solve.torch_backend.solve_torch` (CPU tensors only).

    Args:
        threads: threads of the solve (default torch.get_num_threads()); BLAS runs
            single-threaded inside the core's threads.
        refit: weight mode: after the last iteration S's values on its support become
            those of W0 - L (the exact minimiser of ||W0 - L - S|| for that L and
            support; the same as solve.refit.refit_weight_, done in the core's tiles
            and threads); ``extra["refit_errors"]`` = (relative error before, after).
            Absent when the loop could not do it (other modes, no sparse part).

    ``extra["timing"]`` holds the seconds spent per phase (svd_products, svd_qr,
    svd_small, svd, lform, lform_gemm_thread, project, elementwise, wstep, total),
    summed over iterations; ``extra["qr_fallbacks"]`` counts the SVD panels whose
    CholeskyQR2 needed the Householder fallback, ``extra["gram_fallbacks"]`` the
    iterations whose (p, n) panel was too ill-conditioned for its Gram-based SVD;
    ``extra["band_hits"]`` the weight-mode iterations whose top-k cut was found among
    the candidates near the previous threshold instead of by a selection over all
    entries, ``extra["speculation_hits"]`` those whose L-step input was written by the
    previous iteration's residual pass; ``extra["simd_kernels"]`` whether the
    weight-mode loop's row kernels ran as AVX2 + FMA code.

    Raises:
        TypeError: W0 not float32/float64.
        lowrank_sparse.errors.LapackError: LAPACK failed inside the core.
    """
    dt = W0.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"native backend solves float32/float64, got {dt}")
    nthreads = int(threads) if threads is not None else torch.get_num_threads()
    problem = core_problem(spec, nthreads, refit)
    with _core_threads(nthreads), blas_threads(1):
        res = core().admm_solve(problem, _np(W0, dt), gram=_np(gram, dt), X=_np(X, dt),
                                bias=_np(bias, dt), V0=_np(V0, dt) if spec.rank > 0 else None)
    return _raw_solve(res, spec, X, nthreads)


def _raw_solve(res: Any, spec: AdmmSpec, X: Optional[torch.Tensor], nthreads: int) -> RawSolve:
    """The core's AdmmResult as the backends' common RawSolve."""
    extra: dict[str, Any] = {
        "rho": list(res.rho),
        "rho_final": float(res.rho_final),
        "gscale": float(res.gscale),
        "threads": nthreads,
        "timing": res.timing.as_dict(),
        "qr_fallbacks": int(res.qr_fallbacks),
        "gram_fallbacks": int(res.gram_fallbacks),
        "speculation_hits": int(res.speculation_hits),
        "band_hits": int(res.band_hits),
        "simd_kernels": bool(res.simd_kernels),
    }
    if float(res.refit_after) >= 0:
        extra["refit_errors"] = (float(res.refit_before), float(res.refit_after))
    if spec.mode == "nonlinear":
        extra.update(
            primal_z=list(res.primal_z),
            dual_z=list(res.dual_z),
            samples=int(X.shape[1]) if X is not None else 0,
            rho_z_final=float(res.rho_z_final),
        )
    return RawSolve(
        U=torch.from_numpy(res.U),
        V=torch.from_numpy(res.V),
        S=torch.from_numpy(res.S),
        iterations=int(res.iterations),
        converged=bool(res.converged),
        primal=list(res.primal),
        dual=list(res.dual),
        objective=list(res.objective),
        rho=list(res.rho),
        extra=extra,
    )
