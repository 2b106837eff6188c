"""lowrank_sparse._blas: one threadpoolctl controller, limits applied and restored."""

from __future__ import annotations

import scipy.linalg.blas  # noqa: F401  (SciPy's BLAS loaded, as the core loads it)
from threadpoolctl import threadpool_info

from lowrank_sparse._blas import blas_controller, blas_threads


def _scipy_blas_threads() -> list[int]:
    return [d["num_threads"] for d in threadpool_info()
            if d["user_api"] == "blas" and "scipy" in d["filepath"]]


def test_blas_threads_limits_scipys_blas_and_restores_it() -> None:
    before = _scipy_blas_threads()
    assert before, "SciPy's BLAS not found by threadpoolctl"
    with blas_threads(1):
        assert _scipy_blas_threads() == [1] * len(before)
    assert _scipy_blas_threads() == before


def test_controller_is_built_once() -> None:
    assert blas_controller() is blas_controller()
