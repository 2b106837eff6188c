"""The warm-started truncated SVD and singular-value thresholding: numpy arrays and CPU
tensors run in the C++ core, CUDA tensors the pure-torch twins of :mod:`.torch_ops`."""

from __future__ import annotations

import numpy as np
import torch

from . import torch_ops
from ._boundary import Array, back, core, to_np
from ._checks import check_2d, check_finite, check_int, check_magnitude, check_tau, check_type, use_torch

__all__ = ["truncated_svd", "svt"]


def _svd_args(A: Array, rank: int, V0: Array | None, oversample: int, power_iters: int) -> tuple[int, int]:
    """(p, rank) after checking A (m, n), rank, V0 (n, p) and the iteration counts."""
    check_type(A, "A")
    check_2d(A, "A")
    m, n = int(A.shape[0]), int(A.shape[1])
    rank = check_int(rank, "rank")
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must satisfy 1 <= rank <= min(m, n) = {min(m, n)}, got {rank}")
    if oversample < 0:
        raise ValueError(f"oversample must be >= 0, got {oversample}")
    if power_iters < 1:
        raise ValueError(f"power_iters must be >= 1, got {power_iters}")
    if V0 is None:
        p = min(rank + int(oversample), m, n)
    else:
        check_type(V0, "V0")
        check_2d(V0, "V0")
        p = int(V0.shape[1])
        if int(V0.shape[0]) != n or not rank <= p <= min(m, n):
            raise ValueError(
                f"V0 must be (n, p) with n = {n} and rank ({rank}) <= p <= min(m, n) = {min(m, n)}, "
                f"got shape {tuple(V0.shape)}"
            )
        check_finite(V0, "V0", always=True)
    check_finite(A, "A")
    check_magnitude(A, "A")
    return p, rank


def _start(A: Array, V0: Array | None, p: int, seed: int) -> np.ndarray:
    """The start of the right subspace (n, p) in A's dtype: V0, or Gaussian from seed."""
    dtype = np.dtype(np.float32) if A.dtype in (torch.float32, np.float32) else np.dtype(np.float64)
    if V0 is None:
        return np.random.default_rng(seed).standard_normal((A.shape[1], p)).astype(dtype)
    V = to_np(V0)
    if V.dtype != dtype:
        raise TypeError(f"V0 must have the same dtype as A ({dtype}), got {V.dtype}")
    return V


def truncated_svd(
    A: Array,
    rank: int,
    V0: Array | None = None,
    oversample: int = 8,
    power_iters: int = 2,
    seed: int = 0,
) -> tuple[Array, Array, Array, Array]:
    """Rank-``rank`` truncated SVD of A (m, n) by randomized subspace iteration.

    Each power iteration costs two products with A (Y = A V, B = Q^T A) plus
    O((m + n) p^2) work on the small factors; no full SVD is ever taken.

    Args:
        A: (m, n) float32/float64 matrix.
        rank: r, 1 <= r <= min(m, n).
        V0: (n, p) warm start for the right subspace (the V returned by the previous
            call); None: Gaussian from ``seed`` with p = min(r + oversample, m, n).
        oversample: extra subspace columns when V0 is None.
        power_iters: subspace iterations (>= 1); with a good warm start 1 is enough.
        seed: seed of the Gaussian start.

    Returns:
        U (m, r), s (r,) descending, Vt (r, n), V (n, p) orthonormal warm start.
    """
    p, rank = _svd_args(A, rank, V0, oversample, power_iters)
    if use_torch(A):
        V0t = None if V0 is None else torch.as_tensor(V0, device=A.device)
        return torch_ops.truncated_svd(A, rank, V0t, oversample, power_iters, seed)  # type: ignore[arg-type]
    U, s, Vt, V = core().truncated_svd(to_np(A), rank, _start(A, V0, p, seed), power_iters)
    return back(U, A), back(s, A), back(Vt, A), back(V, A)


def svt(
    A: Array,
    tau: float,
    rank: int,
    V0: Array | None = None,
    oversample: int = 8,
    power_iters: int = 2,
    seed: int = 0,
) -> tuple[Array, Array, Array, Array]:
    """Singular-value thresholding (prox of tau*||.||_*) on the leading ``rank``
    singular triplets of A (m, n), found as in :func:`truncated_svd`.

    Exact when A has at most ``rank`` singular values above tau.

    Returns:
        U (m, k), s (k,) shrunk singular values (all > 0), Vt (k, n), V (n, p) warm
        start; k <= rank; the prox is U @ diag(s) @ Vt.
    """
    tau = check_tau(tau)
    p, rank = _svd_args(A, rank, V0, oversample, power_iters)
    if use_torch(A):
        V0t = None if V0 is None else torch.as_tensor(V0, device=A.device)
        return torch_ops.svt(A, tau, rank, V0t, oversample, power_iters, seed)  # type: ignore[arg-type]
    U, s, Vt, V, k = core().svt(to_np(A), tau, _start(A, V0, p, seed), power_iters)
    k = min(int(k), rank)
    out = (np.ascontiguousarray(U[:, :k]), s[:k].copy(), Vt[:k].copy(), V)
    return tuple(back(o, A) for o in out)  # type: ignore[return-value]
