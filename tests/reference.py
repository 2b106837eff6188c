"""Plain numpy oracles shared by the tests.

Pure functions, written for clarity rather than speed, independently of the code
under test (full sorts instead of selection, explicit loops over windows, full
SVDs).  Add yours below; keep this a module of pure functions.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------
# Sparsity operators (ops engineer)
# ---------------------------------------------------------------------------


def soft_threshold(x: np.ndarray, tau: float) -> np.ndarray:
    """sign(x) * max(|x| - tau, 0), elementwise."""
    x = np.asarray(x)
    t = x.dtype.type(tau)
    return np.where(np.abs(x) > t, x - np.sign(x) * t, x.dtype.type(0))


def topk_order(keys: np.ndarray) -> np.ndarray:
    """Flat indices sorted by descending key, ties by ascending index (full sort)."""
    flat = np.asarray(keys).reshape(-1)
    return np.lexsort((np.arange(flat.size), -flat.astype(np.float64)))


def topk_project(x: np.ndarray, k: int) -> np.ndarray:
    """Keep the k entries of largest |x| in flat order (ties: lower flat index)."""
    x = np.asarray(x)
    keep = topk_order(np.abs(x))[:k]
    out = np.zeros(x.size, dtype=x.dtype)
    out[keep] = x.reshape(-1)[keep]
    return out.reshape(x.shape)


def group_ids(kind: str, m: int, n: int, block: int = 1) -> np.ndarray:
    """(m, n) array: the group index of every entry for "row" / "column" / "channel"."""
    rows, cols = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    if kind == "row":
        return rows
    if kind == "column":
        return cols
    if kind == "channel":
        return cols // block
    raise ValueError(kind)


def group_norms(x: np.ndarray, kind: str, block: int = 1) -> np.ndarray:
    """L2 norm of every group, computed in float64 with one loop per group."""
    m, n = x.shape
    gid = group_ids(kind, m, n, block)
    G = int(gid.max()) + 1 if gid.size else 0
    x64 = x.astype(np.float64)
    return np.array([np.sqrt(np.sum(x64[gid == g] ** 2)) for g in range(G)])


def group_soft_threshold(x: np.ndarray, tau: float, kind: str, block: int = 1) -> np.ndarray:
    """Prox of tau * sum_g ||x_g||_2: group g scaled by max(0, 1 - tau / ||x_g||)."""
    if kind == "unstructured":
        return soft_threshold(x, tau)
    m, n = x.shape
    norms = group_norms(x, kind, block)
    scale = np.where(norms > tau, 1 - tau / np.where(norms > 0, norms, 1.0), 0.0)
    gid = group_ids(kind, m, n, block)
    return (x * scale[gid].astype(x.dtype)).astype(x.dtype)


def group_topk_project(x: np.ndarray, k: int, kind: str, block: int = 1) -> np.ndarray:
    """Keep the k groups of largest L2 norm (ties: lower group index)."""
    if kind == "unstructured":
        return topk_project(x, k)
    m, n = x.shape
    norms = group_norms(x, kind, block)
    kept = set(topk_order(norms)[:k].tolist())
    gid = group_ids(kind, m, n, block)
    mask = np.vectorize(lambda g: g in kept, otypes=[bool])(gid) if gid.size else gid.astype(bool)
    return np.where(mask, x, x.dtype.type(0))


def nm_project(x: np.ndarray, n_keep: int, m_win: int) -> np.ndarray:
    """In each row, in each window of m_win consecutive columns keep the n_keep
    entries of largest |x| (ties: lower column)."""
    rows, cols = x.shape
    out = np.zeros_like(x)
    for i in range(rows):
        for w0 in range(0, cols, m_win):
            cols_w = sorted(range(w0, w0 + m_win), key=lambda j: (-abs(float(x[i, j])), j))
            for j in cols_w[:n_keep]:
                out[i, j] = x[i, j]
    return out


# ---------------------------------------------------------------------------
# Linear algebra (ops engineer)
# ---------------------------------------------------------------------------


def truncated_svd(A: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact rank-r SVD by a full float64 LAPACK SVD: U (m, r), s (r,), Vt (r, n)."""
    U, s, Vt = np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)
    return U[:, :r], s[:r], Vt[:r]


def svt(A: np.ndarray, tau: float) -> np.ndarray:
    """Prox of tau*||.||_* via a full SVD: U diag(max(s - tau, 0)) Vt, float64."""
    U, s, Vt = np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)
    return (U * np.maximum(s - tau, 0.0)) @ Vt


def subspace_distance(P: np.ndarray, Q: np.ndarray) -> float:
    """sin of the largest principal angle between the column spans of P and Q
    (both with orthonormal columns, same shape)."""
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    proj = P - Q @ (Q.T @ P)
    return float(np.linalg.norm(proj, 2))


def decaying_matrix(rng: np.random.Generator, m: int, n: int, decay: float = 0.8,
                    dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """A (m, n) with singular values decay**i (i = 0..min(m, n)-1) and random
    singular vectors; returns (A, s)."""
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = decay ** np.arange(k, dtype=np.float64)
    return ((U * s) @ V.T).astype(dtype), s
