"""Type stub of lowrank_sparse._core, the pybind11 module built from csrc/.

Arrays are numpy arrays (float32 or float64 unless stated), C-contiguous; the checks
live in csrc/bindings/arrays.hpp and raise ValueError / TypeError naming the argument,
lowrank_sparse.errors.LayoutError for a non-contiguous array, and
lowrank_sparse.errors.LapackError when LAPACK returns info != 0.
"""

from __future__ import annotations

import enum
from types import TracebackType
from typing import Optional

import numpy as np

Array = np.ndarray

class Activation(enum.Enum):
    identity = 0
    relu = 1
    leaky_relu = 2
    gelu = 3
    silu = 4
    tanh = 5

class Mode(enum.Enum):
    weight = 0
    gram = 1
    nonlinear = 2

class StructureKind(enum.Enum):
    unstructured = 0
    row = 1
    column = 2
    channel = 3
    nm = 4

class Structure:
    """Sparsity structure: kind; block (kh*kw, channel kind); nm_n of every nm_m (N:M)."""
    kind: StructureKind
    block: int
    nm_n: int
    nm_m: int
    def __init__(self, kind: StructureKind = ..., block: int = 1, nm_n: int = 2,
                 nm_m: int = 4) -> None: ...

class AdmmProblem:
    """Everything that defines an ADMM solve but the arrays (csrc/admm.hpp)."""
    mode: Mode
    activation: Activation
    negative_slope: float
    rank: int
    slices: int
    p: int
    structure: Structure
    k: int
    sparse: bool
    relaxed: bool
    lam_nuclear: float
    lam_sparse: float
    max_iter: int
    tol: float
    rho0: float
    mu: float
    tau: float
    rho_growth: float
    power_iters: int
    newton_steps: int
    gemm_threads: int
    refit_weight: bool
    def __init__(self, **fields: object) -> None: ...

class AdmmTiming:
    """Seconds per phase, summed over the iterations."""
    svd_products: float
    svd_qr: float
    svd_small: float
    svd: float
    lform: float
    lform_gemm_thread: float
    project: float
    elementwise: float
    wstep: float
    total: float
    def as_dict(self) -> dict[str, float]: ...

class AdmmResult:
    """U (m, slices*rt), V (slices*rt, n), S (m, n) and the solve's report."""
    U: Array
    V: Array
    S: Array
    iterations: int
    converged: bool
    primal: list[float]
    dual: list[float]
    objective: list[float]
    rho: list[float]
    rho_final: float
    gscale: float
    primal_z: list[float]
    dual_z: list[float]
    rho_z_final: float
    refit_before: float
    refit_after: float
    qr_fallbacks: int
    gram_fallbacks: int
    speculation_hits: int
    band_hits: int
    simd_kernels: bool
    timing: AdmmTiming

class _Switches:
    """Private: implementation variants for comparisons inside a ``with`` block."""
    def __init__(self, *, weight_fused: Optional[bool] = None,
                 speculate_input: Optional[bool] = None, cholesky_qr: Optional[bool] = None,
                 gram_svd: Optional[bool] = None, simd: Optional[bool] = None) -> None: ...
    def __enter__(self) -> _Switches: ...
    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None: ...

def admm_solve(problem: AdmmProblem, W0: Array, *, gram: Optional[Array] = None,
               X: Optional[Array] = None, bias: Optional[Array] = None,
               V0: Optional[Array] = None) -> AdmmResult:
    """L + S ADMM of ``problem`` on W0 (m, n); gram (n, n), X (n, N), bias (m,),
    V0 (slices, n / slices, p), all in W0's dtype."""

def zstep(y: Array, c: Array, u0: Array, rho: float, activation: Activation, slope: float,
          newton_steps: int) -> Array:
    """Elementwise argmin_u 1/2 (y - act(u))^2 + rho/2 (u - c)^2 (flattened)."""

def simd_available() -> bool: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...

def soft_threshold(x: Array, tau: float, out: Optional[Array] = None) -> Array: ...
def topk_project(x: Array, k: int, out: Optional[Array] = None) -> Array: ...
def group_soft_threshold(x: Array, tau: float, structure: Structure,
                         out: Optional[Array] = None) -> Array: ...
def group_topk_project(x: Array, k: int, structure: Structure,
                       out: Optional[Array] = None) -> Array: ...
def nm_project(x: Array, n: int, m: int, out: Optional[Array] = None) -> Array: ...
def project(x: Array, k: int, structure: Structure, out: Optional[Array] = None) -> Array: ...

def truncated_svd(A: Array, rank: int, V: Array, power_iters: int = 1
                  ) -> tuple[Array, Array, Array, Array]:
    """(U (m, rank), s (rank,), Vt (rank, n), V_new (n, p)) by subspace iteration from V."""

def svt(A: Array, tau: float, V: Array, power_iters: int = 1, rank: Optional[int] = None
        ) -> tuple[Array, Array, Array, Array, int]:
    """(U, max(s - tau, 0), Vt, V_new, count of s > tau) on the leading ``rank`` triplets."""

def aq_decode(codes: Array, codebooks: Array) -> Array:
    """(N, d) = sum_m codebooks[m, codes[:, m]]; codes (N, M) uint16, codebooks (M, K, d)."""

def aq_encode_beam(X: Array, codebooks: Array, beam: int = 8, refine: int = 1,
                   threads: int = 1) -> tuple[Array, Array]:
    """(codes (N, M) uint16, squared error (N,)) by beam search."""

def aq_encode_greedy(X: Array, codebooks: Array, threads: int = 1) -> tuple[Array, Array]: ...

def aq_ls_update(X: Array, codes: Array, codebooks: Array, ridge: float = 1e-06) -> Array:
    """Least-squares codebooks (M, K, d) with the codes fixed."""
