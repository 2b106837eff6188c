"""The L + S ADMM through the C++ core (lowrank_sparse._core.admm_solve_f32/f64).

Arrays cross as C-contiguous numpy views of the (CPU) tensors, without copies when
the tensors already are contiguous in the compute dtype.  The loop runs with the GIL
released.

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

from typing import Optional

import numpy as np
import torch
from .._blas import blas_threads

from .._validate import AdmmSpec
from .torch_backend import RawSolve

_MODES = {"weight": 0, "gram": 1, "nonlinear": 2}


def _np(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[np.ndarray]:
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError("the native backend needs CPU tensors")
    return np.ascontiguousarray(t.detach().to(dtype).numpy())


def solve_native(
    W0: torch.Tensor,
    spec: AdmmSpec,
    V0: torch.Tensor,
    gram: Optional[torch.Tensor] = None,
    X: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    threads: Optional[int] = None,
    weight_fused: bool = True,
    cholesky_qr: bool = True,
    speculate_input: bool = True,
    gram_svd: bool = True,
    refit: bool = False,
) -> RawSolve:
    """Run the ADMM of ``spec`` in C++; same arguments and result as
    :func:`lowrank_sparse.solve.torch_backend.solve_torch` (CPU tensors only).

    Args:
        threads: threads of the solve (default torch.get_num_threads()); BLAS runs
            single-threaded inside the core's threads.
        weight_fused: weight mode only: run the restructured loop (three (m, n)
            arrays, fused passes; csrc/admm.cpp ``admm_weight_fused``).  False runs the
            general loop, which performs the same iterations with more memory traffic;
            it is kept for comparisons.
        cholesky_qr: QR of the truncated SVD's (m, p) and (n, p) panels by CholeskyQR2
            (syrk + potrf + trsm, twice; Householder fallback when a panel is too
            ill-conditioned, counted in ``extra["qr_fallbacks"]``).  False: always
            Householder (geqrf + orgqr); kept for comparisons.
        speculate_input: fused weight loop: the residual pass also writes the next
            iteration's L-step input, assuming the balanced penalty update (factor
            ``rho_growth``), so the pass that forms it runs only after the other
            updates (count of saved passes: ``extra["speculation_hits"]``).  Same
            iterates either way; False is kept for comparisons.
        gram_svd: the SVD of the truncated SVD's (p, n) panel B = Q^T A from its Gram
            B B^T (syrk + syevd + one (p, p, n) GEMM; about half the work of the QR
            path) whenever B's singular values span less than 1 / (16 sqrt(eps));
            iterations with a worse-conditioned B take the QR path and are counted in
            ``extra["gram_fallbacks"]``.  False: always the QR of B^T and gesdd.
        refit: weight mode with the fused loop: after the last iteration S's values on
            its support become those of W0 - L (the exact minimiser of ||W0 - L - S||
            for that L and support; the same as decomposition._refit_weight_, done in
            the core's tiles and threads); ``extra["refit_errors"]`` = (relative error
            before, after).  Absent when the loop could not do it (other modes, the
            general loop, no sparse part).

    ``extra["timing"]`` holds the seconds spent per phase (svd_products, svd_qr,
    svd_small, svd, lform, project, elementwise, wstep, total), summed over iterations;
    ``extra["qr_fallbacks"]`` counts the SVD panels that needed the Householder fallback;
    ``extra["band_hits"]`` the iterations of the fused weight loop whose top-k cut was
    found among the candidates near the previous threshold (collected during the pass
    that forms the S-step input) instead of by a separate selection over all entries.
    """
    from .. import _core

    dt = W0.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"native backend solves float32/float64, got {dt}")
    fn = _core.admm_solve_f64 if dt == torch.float64 else _core.admm_solve_f32
    st = spec.structure
    nthreads = int(threads) if threads is not None else torch.get_num_threads()
    old = _core.get_num_threads()
    _core.set_num_threads(nthreads)
    try:
        with blas_threads(1):
            out = fn(
                _np(W0, dt),
                _MODES[spec.mode],
                _np(gram, dt),
                _np(X, dt),
                _np(bias, dt),
                spec.activation_code,
                spec.negative_slope,
                spec.rank,
                spec.slices,
                spec.p,
                st.code,
                st.block,
                st.n if st.kind == "nm" else 2,
                st.m if st.kind == "nm" else 4,
                spec.k,
                spec.has_sparse,
                spec.relaxed,
                spec.lam_nuclear,
                spec.lam_sparse,
                spec.max_iter,
                spec.tol,
                spec.rho0,
                spec.mu,
                spec.tau,
                spec.rho_growth,
                spec.power_iters,
                spec.newton_steps,
                _np(V0, dt) if spec.rank > 0 else None,
                nthreads,
                bool(weight_fused),
                bool(cholesky_qr),
                bool(speculate_input),
                bool(gram_svd),
                bool(refit),
            )
    finally:
        _core.set_num_threads(old)
    extra = {
        "rho": list(out["rho"]),
        "rho_final": float(out["rho_final"]),
        "gscale": float(out["gscale"]),
        "threads": nthreads,
        "timing": dict(out["timing"]),
        "qr_fallbacks": int(out["qr_fallbacks"]),
        "gram_fallbacks": int(out["gram_fallbacks"]),
        "speculation_hits": int(out["speculation_hits"]),
        "band_hits": int(out["band_hits"]),
    }
    if float(out["refit_after"]) >= 0:
        extra["refit_errors"] = (float(out["refit_before"]), float(out["refit_after"]))
    if spec.mode == "nonlinear":
        extra.update(
            primal_z=list(out["primal_z"]),
            dual_z=list(out["dual_z"]),
            samples=int(X.shape[1]) if X is not None else 0,
            rho_z_final=float(out["rho_z_final"]),
        )
    return RawSolve(
        U=torch.from_numpy(out["U"]),
        V=torch.from_numpy(out["V"]),
        S=torch.from_numpy(out["S"]),
        iterations=int(out["iterations"]),
        converged=bool(out["converged"]),
        primal=list(out["primal"]),
        dual=list(out["dual"]),
        objective=list(out["objective"]),
        rho=list(out["rho"]),
        extra=extra,
    )
