"""pytest-benchmark cases: one per (layer shape, backend), the same cases as
benchmarks/run_suite.py.

    python -m pytest benchmarks --benchmark-only [--benchmark-json out.json]

Each benchmark is one full solve (``pedantic``, 1 round for large layers, 3 for
small); ``extra_info`` carries iterations, the final relative error (recomputed
independently in float64), seconds per iteration and the GEMM floor multiple.
The naive full-SVD reference is benchmarked on shapes up to 1000x4096 only (one
full SVD of a 4096x4096 float32 matrix alone takes minutes on 2 shared cores).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import harness
from run_suite import solver_settings
from shapes import FULL, QUICK, STRUCTURED, Case, synthetic_weight

TOL = 1e-4
NAIVE_MAX_ENTRIES = 1000 * 4096


def _cases() -> list[Case]:
    spec = os.environ.get("LRS_BENCH_SHAPES", "")
    if spec == "quick":
        return list(QUICK)
    cases = FULL + STRUCTURED
    if spec:
        names = {s.strip() for s in spec.split(",") if s.strip()}
        cases = [c for c in cases if c.name in names or c.shape in names]
    return cases


CASES = _cases()
PARAMS = [
    pytest.param(c, b, id=f"{c.name}-{c.shape}-{c.structure}-{b}")
    for c in CASES
    for b in harness.BACKENDS
]

_W: dict[tuple[int, int], np.ndarray] = {}


def _weight(case: Case) -> np.ndarray:
    key = (case.m, case.n)
    if key not in _W:
        _W.clear()  # keep one large weight alive at a time
        _W[key] = synthetic_weight(case.m, case.n, seed=0)
    return _W[key]


@pytest.mark.parametrize(("case", "backend"), PARAMS)
def test_decompose(benchmark, case: Case, backend: str) -> None:
    if backend not in harness.available_backends():
        pytest.skip(f"backend {backend} not available here")
    if backend == "torch_fullsvd" and case.m * case.n > NAIVE_MAX_ENTRIES:
        pytest.skip("full SVD per iteration too slow at this size; see run_suite.py (extrapolated)")
    W = _weight(case)
    rounds = 3 if case.m * case.n <= 2_000_000 else 1
    holder: dict = {}

    def once() -> None:
        holder["res"] = harness.solve(case, W, backend, tol=TOL)[0]

    benchmark.pedantic(once, rounds=rounds, iterations=1, warmup_rounds=0)
    res = holder["res"]
    err = harness.rel_error(W, res.U, res.V, res.S)
    p, q = solver_settings(case)
    floor = harness.gemm_floor(case, p, q, repeats=3)["seconds"]
    per_iter = benchmark.stats.stats.median / max(1, res.info.iterations)
    benchmark.extra_info.update(
        iterations=int(res.info.iterations), converged=bool(res.info.converged), rel_error=err,
        per_iter_s=per_iter, gemm_floor_s=floor, floor_multiple=per_iter / floor,
    )
    assert np.isfinite(err) and 0.0 <= err < 1.0
