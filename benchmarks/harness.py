"""Measurement harness for the per-layer decomposition benchmark.

Backends compared (all in one process, same thread count):

=================  ==============================================================
``native``         lowrank_sparse.decompose(..., backend="native"): the C++ core
``torch_fullsvd``  the torch backend's iterations with the warm-started truncated
                   SVD replaced by a full ``torch.linalg.svd`` each iteration (the
                   naive reference; see :func:`full_svd_variant`)
``torch``          lowrank_sparse.decompose(..., backend="torch") on CPU
``torch_cuda``     the same torch code on a CUDA tensor (only when available)
=================  ==============================================================

Timings are wall-clock (time.perf_counter) around the public ``decompose`` call,
so they include argument checking and conversions.  The final relative error
||W - U V - S||_F / ||W||_F is recomputed here in float64 from the returned
factors, independently of the solver's own histories.

The GEMM floor (:func:`gemm_floor`) is the time of the matrix products one ADMM
iteration needs, as counted from the solvers' code (see :func:`iteration_gemms`),
timed with SciPy's sgemm (the BLAS the C++ core calls) on the same thread count.

Peak memory is measured in a separate process (benchmarks/memprobe.py): the
process's peak resident set (VmHWM in /proc/self/status) is reset by writing "5"
to /proc/self/clear_refs just before the solve, and the solve's extra memory is
VmHWM after it minus VmRSS before it.  This counts every allocation (C++, BLAS
workspaces, torch's allocator, numpy), unlike tracemalloc.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from shapes import Case, synthetic_weight  # noqa: E402

BACKENDS: tuple[str, ...] = ("native", "torch_fullsvd", "torch", "torch_cuda")

#: Label of each backend in tables and plots.
LABELS: dict[str, str] = {
    "native": "(a) native C++",
    "torch_fullsvd": "(b) torch, full SVD",
    "torch": "(c) torch backend",
    "torch_cuda": "(d) torch CUDA",
}

_LIMITER: Any = None


# ----------------------------------------------------------------------------- threads
def set_threads(n: int) -> dict[str, Any]:
    """Use ``n`` threads everywhere: torch intra-op, every BLAS/OpenMP pool that
    threadpoolctl sees (SciPy's OpenBLAS, which the C++ core calls), and the core's
    own parallel_for pool.  Returns what was set, for the report."""
    global _LIMITER
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    _LIMITER = threadpool_limits(limits=n)  # stays in force until restored
    core = "n/a"
    try:
        from lowrank_sparse import _core

        if hasattr(_core, "set_num_threads"):
            _core.set_num_threads(n)
            core = str(_core.get_num_threads()) if hasattr(_core, "get_num_threads") else str(n)
    except ImportError:
        core = "core not built"
    return {"torch": torch.get_num_threads(), "blas": n, "core": core}


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, load, library versions and BLAS libraries (threadpoolctl)."""
    import scipy
    from threadpoolctl import threadpool_info

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    blas = sorted(
        {
            f"{d.get('internal_api')} {d.get('version')} ({Path(d.get('filepath', '')).name}, "
            f"{d.get('num_threads')} threads)"
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        }
    )
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_avg_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas": blas,
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def available_backends() -> list[str]:
    """The backends this machine can run (torch_cuda only with a GPU)."""
    out = ["native", "torch_fullsvd", "torch"]
    if torch.cuda.is_available():
        out.append("torch_cuda")
    return out


# ----------------------------------------------------------------------------- naive variant
class _FullSvdOps:
    """Proxy of lowrank_sparse.ops.torch_ops whose truncated SVD / SVT compute a full
    ``torch.linalg.svd`` of their argument and truncate it.  Everything else is the
    torch backend's own operator."""

    def __init__(self, base: Any) -> None:
        self._base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    @staticmethod
    def truncated_svd(
        A: torch.Tensor, rank: int, V0: Optional[torch.Tensor] = None, oversample: int = 8,
        power_iters: int = 2, seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
        p = min(rank + oversample, *A.shape)
        V = V0 if V0 is not None else Vh[:p].mT.contiguous()
        return U[:, :rank].contiguous(), s[:rank].contiguous(), Vh[:rank].contiguous(), V

    @staticmethod
    def svt(
        A: torch.Tensor, tau: float, rank: int, V0: Optional[torch.Tensor] = None,
        oversample: int = 8, power_iters: int = 2, seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
        s = torch.clamp(s - tau, min=0)
        q = max(1, int((s > 0).sum()))
        p = min(rank + oversample, *A.shape)
        V = V0 if V0 is not None else Vh[:p].mT.contiguous()
        return U[:, :q].contiguous(), s[:q].contiguous(), Vh[:q].contiguous(), V


@contextlib.contextmanager
def full_svd_variant() -> Iterator[None]:
    """Within this context, backend="torch" runs the naive reference: the very same
    ADMM iterations (lowrank_sparse/solve/torch_backend.py), with the L-step's
    warm-started truncated SVD replaced by a full torch.linalg.svd."""
    from lowrank_sparse.solve import torch_backend

    if not hasattr(torch_backend, "torch_ops"):
        raise RuntimeError(
            "benchmarks: lowrank_sparse.solve.torch_backend no longer calls its SVD through "
            "`torch_ops`; update benchmarks/harness.py:full_svd_variant"
        )
    orig = torch_backend.torch_ops
    torch_backend.torch_ops = _FullSvdOps(orig)
    try:
        yield
    finally:
        torch_backend.torch_ops = orig


# ----------------------------------------------------------------------------- solving
@dataclass
class Run:
    """One solve of one case by one backend."""

    backend: str
    seconds: float
    iterations: int
    converged: bool
    rel_error: float
    partial: bool = False  # stopped at an iteration cap lower than the case's (naive only)
    # native only: seconds per iteration of each phase of the solver (info.extra["timing"]
    # divided by the iteration count) and its counters (band_hits, speculation_hits,
    # qr_fallbacks)
    phases: Optional[dict[str, float]] = None

    @property
    def per_iter(self) -> float:
        return self.seconds / max(1, self.iterations)


def rel_error(W: np.ndarray, U: Any, V: Any, S: Any) -> float:
    """||W - U V - S||_F / ||W||_F in float64 (independent of the solver)."""

    def f64(x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=np.float64)

    W64 = W.astype(np.float64)
    R = W64 - f64(U) @ f64(V) - f64(S)
    return float(np.linalg.norm(R) / np.linalg.norm(W64))


def _sync(backend: str) -> None:
    if backend == "torch_cuda":
        torch.cuda.synchronize()


def solve(case: Case, W: np.ndarray, backend: str, *, tol: float, max_iter: Optional[int] = None,
          seed: int = 0) -> tuple[Any, float]:
    """Run ``decompose`` on W for ``case`` with ``backend``; returns (result, seconds)."""
    import lowrank_sparse as lrs

    kw = dict(
        rank=case.rank, density=case.density, structure=case.structure, block=case.block,
        max_iter=case.max_iter if max_iter is None else max_iter, tol=tol, seed=seed,
    )
    if backend == "native":
        Wt = torch.from_numpy(W)
        t0 = time.perf_counter()
        res = lrs.decompose(Wt, backend="native", **kw)
        return res, time.perf_counter() - t0
    if backend == "torch":
        Wt = torch.from_numpy(W)
        t0 = time.perf_counter()
        res = lrs.decompose(Wt, backend="torch", **kw)
        return res, time.perf_counter() - t0
    if backend == "torch_fullsvd":
        Wt = torch.from_numpy(W)
        with full_svd_variant():
            t0 = time.perf_counter()
            res = lrs.decompose(Wt, backend="torch", **kw)
            return res, time.perf_counter() - t0
    if backend == "torch_cuda":
        Wt = torch.from_numpy(W).cuda()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = lrs.decompose(Wt, backend="torch", **kw)
        torch.cuda.synchronize()
        return res, time.perf_counter() - t0
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def run_once(case: Case, W: np.ndarray, backend: str, *, tol: float,
             max_iter: Optional[int] = None) -> Run:
    """Solve once and record time, iterations and the independent final error."""
    settle()
    res, dt = solve(case, W, backend, tol=tol, max_iter=max_iter)
    info = res.info
    err = rel_error(W, res.U, res.V, res.S)
    cap = case.max_iter if max_iter is None else max_iter
    phases = None
    extra = getattr(info, "extra", None) or {}
    if backend == "native" and "timing" in extra:
        it = max(1, int(info.iterations))
        phases = {k: float(v) / it for k, v in extra["timing"].items()}
        for k in ("band_hits", "speculation_hits", "qr_fallbacks"):
            if k in extra:
                phases[k] = float(extra[k])
    return Run(backend, dt, int(info.iterations), bool(info.converged), err,
               partial=cap < case.max_iter, phases=phases)


def warmup(backends: list[str]) -> None:
    """One tiny solve per backend: loads libraries, starts thread pools."""
    from shapes import Case as _C

    c = _C("warmup", 24, 40, rank=3, max_iter=3)
    W = synthetic_weight(c.m, c.n, seed=1)
    for b in backends:
        solve(c, W, b, tol=1e-4)


# ----------------------------------------------------------------------------- GEMM floor
def iteration_gemms(m: int, n: int, r: int, p: int, power_iters: int) -> list[tuple[str, int, int, int]]:
    """The GEMMs of one weight-space ADMM iteration, as (what, M, N, K) of C (M, N) = A (M, K) B (K, N).

    Counted from csrc/svd.cpp (truncated_svd) and lowrank_sparse/solve/torch_backend.py:
    per power iteration Y = A V (m, p) and B = Q^T A (p, n); then U = Q Ub (m, r); then
    L = (U s) Vt (m, n), formed once per iteration for the S-step.
    """
    g: list[tuple[str, int, int, int]] = []
    for _ in range(power_iters):
        g.append(("Y = A V", m, p, n))
        g.append(("B = Q^T A", p, n, m))
    g.append(("U = Q Ub", m, r, p))
    g.append(("L = U diag(s) Vt", m, n, r))
    return g


def gemm_flops(gemms: list[tuple[str, int, int, int]]) -> float:
    """Floating-point operations of ``gemms`` ((what, M, N, K) each): 2*M*N*K per GEMM,
    a multiply and an add per multiply-accumulate (FLOPs = 2 x MACs)."""
    return float(sum(2.0 * M * N * K for _, M, N, K in gemms))


def _sgemm_rowmajor(M: int, N: int, K: int, rng: np.random.Generator):
    """A closure computing C (M, N) = A (M, K) B (K, N) for row-major float32 arrays
    with SciPy's sgemm, without copies (C^T = B^T A^T in column-major terms)."""
    from scipy.linalg.blas import sgemm

    A = rng.standard_normal((M, K), dtype=np.float32)
    B = rng.standard_normal((K, N), dtype=np.float32)
    CT = np.zeros((N, M), dtype=np.float32, order="F")  # = C row-major (M, N)

    def call() -> None:
        out = sgemm(1.0, B.T, A.T, c=CT, overwrite_c=1)
        assert out is CT or np.shares_memory(out, CT)

    return call


def _median_time(fn: Any, repeats: int, min_total: float = 0.05) -> float:
    fn()  # warm
    times = []
    t_all = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - t_all > max(min_total, 2.0):
            break
    return statistics.median(times)


def gemm_floor(case: Case, p: int, power_iters: int, repeats: int = 7, seed: int = 0) -> dict[str, Any]:
    """Time the GEMMs of one iteration at this shape with SciPy's sgemm (and torch.mm
    for comparison).  Returns seconds (median per GEMM, summed) and GFLOP/s."""
    rng = np.random.default_rng(seed)
    gemms = iteration_gemms(case.m, case.n, case.rank, p, power_iters)
    settle()
    t_sc = 0.0
    t_th = 0.0
    cache: dict[tuple[int, int, int], tuple[float, float]] = {}
    for _, M, N, K in gemms:
        key = (M, N, K)
        if key not in cache:
            ts = _median_time(_sgemm_rowmajor(M, N, K, rng), repeats)
            a = torch.randn(M, K)
            b = torch.randn(K, N)
            c = torch.empty(M, N)
            tt = _median_time(lambda: torch.mm(a, b, out=c), repeats)
            cache[key] = (ts, tt)
            del a, b, c
        t_sc += cache[key][0]
        t_th += cache[key][1]
    fl = gemm_flops(gemms)
    return {
        "gemms": [f"{w}: ({M}x{K})@({K}x{N})" for w, M, N, K in gemms],
        "gflop": fl / 1e9,
        "seconds": t_sc,
        "gflops": fl / t_sc / 1e9,
        "seconds_torch": t_th,
        "gflops_torch": fl / t_th / 1e9,
    }


# ----------------------------------------------------------------------------- memory
def memory_probe(requests: list[dict[str, Any]], threads: int, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Run benchmarks/memprobe.py once for ``requests`` (each a dict with case fields,
    backend, tol, max_iter) and return its per-request records (bytes)."""
    cmd = [sys.executable, str(HERE / "memprobe.py"), "--threads", str(threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # see memprobe.py
    proc = subprocess.run(cmd, input=json.dumps(requests), capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memprobe failed (rc={proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_status_kb(key: str) -> int:
    """A 'VmXXX:  123 kB' field of /proc/self/status, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- records
@dataclass
class CaseResult:
    """Everything measured for one case."""

    case: dict[str, Any]
    floor: dict[str, Any]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend -> medians
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend -> bytes
    notes: list[str] = field(default_factory=list)


def summarize(runs: list[Run], ref_iters: Optional[int] = None) -> dict[str, Any]:
    """Median over repeats of one backend's runs (iterations/error from the last run;
    they are deterministic).  ``ref_iters``: iteration count a partial (capped) naive run
    is extrapolated to."""
    last = runs[-1]
    sec = statistics.median(r.seconds for r in runs)
    per = statistics.median(r.per_iter for r in runs)
    d: dict[str, Any] = {
        "repeats": len(runs),
        "seconds": sec,
        "per_iter": per,
        "iterations": last.iterations,
        "converged": last.converged,
        "rel_error": last.rel_error,
        "partial": last.partial,
    }
    if last.partial and ref_iters is not None:
        d["seconds_est"] = per * ref_iters
        d["iterations_est"] = ref_iters
    ph = [r.phases for r in runs if r.phases]
    if ph:  # per-phase medians over the repeats
        d["phases"] = {k: statistics.median(p[k] for p in ph) for k in ph[0]}
    return d


def to_json(obj: Any) -> Any:
    if isinstance(obj, CaseResult):
        return asdict(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def clear() -> None:
    gc.collect()


#: Seconds to wait before each timed section (see :func:`settle`).
SETTLE_SECONDS = 0.15


def settle() -> None:
    """Let the thread pools of whatever ran just before go idle.

    After a call, OpenBLAS's worker threads keep spinning for about 2^28 cycles (~0.1 s)
    and OpenMP's for a shorter while; on 2 cores a timed call started meanwhile shares
    them with those spinning threads.  Measured here (512x4608, 22 iterations): the native
    solve took 8.5 % longer per iteration right after the GEMM floor than after a 0.3 s
    pause.  Every timed section (solves of every backend, the floor) starts after this
    pause, so none pays for another's idle threads."""
    time.sleep(SETTLE_SECONDS)
