"""Structured-sparsity operators and the warm-started truncated SVD.

Every function accepts a numpy array or a torch tensor (float32 or float64) and
returns the same kind.  numpy arrays and CPU tensors run in the C++ core
(``lowrank_sparse._core``; CPU tensors cross through ``.numpy()`` without a copy
when contiguous); CUDA tensors run the pure-torch versions in
:mod:`lowrank_sparse.ops.torch_ops`, which have identical semantics.  Inputs are
never modified.

Semantics (shared by both backends):

* ``soft_threshold(x, tau)``: sign(x) * max(|x| - tau, 0) (prox of tau*||x||_1).
* ``topk_project(x, k)``: keep the k entries of largest |x| (flat order), exactly k;
  ties go to the lower flat index.
* ``group_soft_threshold(x, tau, structure)``: prox of tau * sum_g ||x_g||_2.
* ``group_topk_project(x, k, structure)``: keep the k groups of largest L2 norm
  (ties: lower group index).  Groups: rows, columns, or input channels (column
  blocks of ``block`` = kh*kw) of an (m, n) matrix.
* ``nm_project(x, n, m)``: N:M along the input dimension (columns).
* ``project(x, k, structure)``: the hard projection S is kept on in ADMM.
* ``truncated_svd`` / ``svt``: randomized subspace iteration warm-started from the
  previous right subspace.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from ..structure import Structure, parse_structure
from . import torch_ops

Array = Union[np.ndarray, torch.Tensor]

__all__ = [
    "soft_threshold",
    "topk_project",
    "group_soft_threshold",
    "group_topk_project",
    "nm_project",
    "project",
    "truncated_svd",
    "svt",
    "set_num_threads",
    "get_num_threads",
    "torch_ops",
]

_FLOATS_NP = (np.dtype(np.float32), np.dtype(np.float64))
_FLOATS_T = (torch.float32, torch.float64)


def _core():
    from .. import _core  # imported lazily: the pure-Python parts work without a build

    return _core


def set_num_threads(n: int) -> None:
    """Threads used by the C++ core's parallel passes (n < 1: hardware concurrency).
    BLAS threads (inside the SVD) are SciPy's: control them with threadpoolctl."""
    _core().set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads used by the C++ core's parallel passes."""
    return int(_core().get_num_threads())


def _check_type(x: Array, name: str) -> None:
    if isinstance(x, torch.Tensor):
        if x.dtype not in _FLOATS_T:
            raise TypeError(f"{name} must be a float32 or float64 tensor, got {x.dtype}")
    elif isinstance(x, np.ndarray):
        if x.dtype not in _FLOATS_NP:
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {x.dtype}")
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _check_finite(x: Array, name: str) -> None:
    # The C++ core checks finiteness itself (same message, no temporary): only the
    # torch (CUDA) path needs the check here.
    if not _use_torch(x):
        return
    ok = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf")


def _check_2d(x: Array, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (m, n), got shape {tuple(x.shape)}")


def _check_tau(tau: float) -> float:
    t = float(tau)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    return t


def _check_k(k: int, limit: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 0 <= k <= limit:
        raise ValueError(f"k must satisfy 0 <= k <= {limit} ({what}), got {k}")
    return k


def _use_torch(x: Array) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type != "cpu"


def _to_np(x: Array) -> np.ndarray:
    """C-contiguous numpy view of a CPU tensor / array (copies only if not contiguous)."""
    if isinstance(x, torch.Tensor):
        return x.detach().contiguous().numpy()
    return np.ascontiguousarray(x)


def _back(out: np.ndarray, like: Array) -> Array:
    return torch.from_numpy(out) if isinstance(like, torch.Tensor) else out


def _structure(structure: str | Structure, block: int, x: Array) -> Structure:
    s = parse_structure(structure, block=block)
    _check_2d(x, "x")
    s.check_shape(int(x.shape[0]), int(x.shape[1]))
    return s


def soft_threshold(x: Array, tau: float) -> Array:
    """sign(x) * max(|x| - tau, 0) elementwise.  x: any shape; tau >= 0."""
    _check_type(x, "x")
    tau = _check_tau(tau)
    _check_finite(x, "x")
    if _use_torch(x):
        return torch_ops.soft_threshold(x, tau)
    return _back(_core().soft_threshold(_to_np(x), tau), x)


def topk_project(x: Array, k: int) -> Array:
    """Keep the k entries of largest |x| (any shape, flat order; ties: lower index)."""
    _check_type(x, "x")
    k = _check_k(k, int(np.prod(x.shape)), "number of entries")
    _check_finite(x, "x")
    if _use_torch(x):
        return torch_ops.topk_project(x, k)
    return _back(_core().topk_project(_to_np(x), k), x)


def group_soft_threshold(x: Array, tau: float, structure: str | Structure, block: int = 1) -> Array:
    """Prox of tau * sum_g ||x_g||_2 on x (m, n): group g scaled by max(0, 1 - tau/||x_g||).

    structure: "unstructured" (plain soft-threshold), "row", "column", "channel"
    (column blocks of ``block`` = kh*kw) or a Structure.
    """
    _check_type(x, "x")
    tau = _check_tau(tau)
    s = _structure(structure, block, x)
    if s.kind == "nm":
        raise ValueError("group_soft_threshold: N:M is a pattern, not a group structure")
    _check_finite(x, "x")
    if _use_torch(x):
        return torch_ops.group_soft_threshold(x, tau, s)
    return _back(_core().group_soft_threshold(_to_np(x), tau, s.code, s.block), x)


def group_topk_project(x: Array, k: int, structure: str | Structure, block: int = 1) -> Array:
    """Keep the k groups of largest L2 norm of x (m, n) (ties: lower group index).

    For "unstructured" k counts entries.
    """
    _check_type(x, "x")
    s = _structure(structure, block, x)
    if s.kind == "nm":
        raise ValueError("group_topk_project: N:M is a pattern, not a group structure; use nm_project")
    k = _check_k(k, s.num_groups(int(x.shape[0]), int(x.shape[1])), f"groups of {s.name!r}")
    _check_finite(x, "x")
    if _use_torch(x):
        return torch_ops.group_topk_project(x, k, s)
    return _back(_core().group_topk_project(_to_np(x), k, s.code, s.block), x)


def nm_project(x: Array, n: int, m: int) -> Array:
    """N:M projection of x (rows, cols): in each row keep ``n`` of every ``m`` consecutive
    entries, those of largest |x| (ties: lower column).  Needs 1 <= n < m, cols % m == 0."""
    _check_type(x, "x")
    s = _structure(f"{int(n)}:{int(m)}", 1, x)
    _check_finite(x, "x")
    if _use_torch(x):
        return torch_ops.nm_project(x, s.n, s.m)
    return _back(_core().nm_project(_to_np(x), s.n, s.m), x)


def project(x: Array, k: int, structure: str | Structure, block: int = 1) -> Array:
    """Hard projection of x (m, n) onto the structure: k groups (entries for
    "unstructured"); for "N:M" k is ignored (the pattern fixes the count)."""
    _check_type(x, "x")
    s = _structure(structure, block, x)
    if s.kind == "nm":
        return nm_project(x, s.n, s.m)
    return group_topk_project(x, k, s)


def _svd_args(A: Array, rank: int, V0: Array | None, oversample: int, power_iters: int) -> tuple[int, int]:
    _check_type(A, "A")
    _check_2d(A, "A")
    m, n = int(A.shape[0]), int(A.shape[1])
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must satisfy 1 <= rank <= min(m, n) = {min(m, n)}, got {rank}")
    if oversample < 0:
        raise ValueError(f"oversample must be >= 0, got {oversample}")
    if power_iters < 1:
        raise ValueError(f"power_iters must be >= 1, got {power_iters}")
    if V0 is None:
        p = min(int(rank) + int(oversample), m, n)
    else:
        _check_type(V0, "V0")
        _check_2d(V0, "V0")
        p = int(V0.shape[1])
        if int(V0.shape[0]) != n or not rank <= p <= min(m, n):
            raise ValueError(
                f"V0 must be (n, p) with n = {n} and rank ({rank}) <= p <= min(m, n) = {min(m, n)}, "
                f"got shape {tuple(V0.shape)}"
            )
        _check_finite(V0, "V0")
    _check_finite(A, "A")
    return p, int(rank)


def _start(A: Array, V0: Array | None, p: int, seed: int) -> np.ndarray:
    dtype = np.dtype(np.float32) if A.dtype in (torch.float32, np.float32) else np.dtype(np.float64)
    if V0 is None:
        return np.random.default_rng(seed).standard_normal((A.shape[1], p)).astype(dtype)
    V = _to_np(V0)
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
    if _use_torch(A):
        V0t = None if V0 is None else torch.as_tensor(V0, device=A.device)
        return torch_ops.truncated_svd(A, rank, V0t, oversample, power_iters, seed)  # type: ignore[arg-type]
    U, s, Vt, V = _core().truncated_svd(_to_np(A), rank, _start(A, V0, p, seed), power_iters)
    return _back(U, A), _back(s, A), _back(Vt, A), _back(V, A)


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
    tau = _check_tau(tau)
    p, rank = _svd_args(A, rank, V0, oversample, power_iters)
    if _use_torch(A):
        V0t = None if V0 is None else torch.as_tensor(V0, device=A.device)
        return torch_ops.svt(A, tau, rank, V0t, oversample, power_iters, seed)  # type: ignore[arg-type]
    U, s, Vt, V, k = _core().svt(_to_np(A), tau, _start(A, V0, p, seed), power_iters)
    k = min(int(k), rank)
    out = (np.ascontiguousarray(U[:, :k]), s[:k].copy(), Vt[:k].copy(), V)
    return tuple(_back(o, A) for o in out)  # type: ignore[return-value]
