"""Per-layer error curves: relative error of every candidate configuration of a layer.

All errors are relative Frobenius errors in the (optionally whitened) weight space:
``e = ||(W - W_hat) C||_F / ||W C||_F`` where ``C C^T = G`` (Cholesky of the layer's
input Gram, so ``||Y C||_F = ||Y G^{1/2}||_F``) or C = I without a gram.  The singular
values of ``A = W C`` are those of ``W G^{1/2}``.

* rank (Eckart-Young-Mirsky): ``e(j)^2 = sum_{i>j} s_i^2 / sum_i s_i^2``.  Singular values
  come from ``eigvalsh`` of the smaller Gram ``A A^T`` / ``A^T A`` (one syrk; float64 for
  small layers, float32 else: squared values accurate to ~k * 1.2e-7 ||A||_2^2, far below
  what matters for the curves), exact for every layer size (VGG's 4096x25088 included:
  syrk ~4 s + ``eigvalsh`` ~1.6 s on one core).  All small linear algebra runs
  single-threaded (:func:`serial_linalg`).  With ALDS slicing (g contiguous column
  slices) the tails of the g column blocks add; all slices' spectra come from one batched
  ``eigvalsh`` of their Grams, which without a gram are W_b W_b^T blocks (one batched
  GEMM at the finest slice count, summed for coarser ones).  With a gram, slice i uses
  the diagonal block G_ii (cross-slice input correlations are ignored, an approximation).
* sparse only: ``e^2 = 1 - (energy of the kept groups) / (total energy)`` with groups
  ranked by energy (magnitude pruning).  With a gram the columns are scaled by
  sqrt(diag G) (exact for diagonal G, the usual activation-aware saliency otherwise).
  Layers with more than 2^18 entries estimate the energy-vs-count curve from a seeded
  random sample of 2^18 entries / whole groups (row, column, channel group energies are
  exact).
* low rank + sparse (proxy, used when no ``error_fn`` is given): one alternating
  projection step in the whitened space: L = A_r (truncated SVD), S = top-k groups of the
  residual R = A - A_r, ``e^2 = ||R||^2 (1 - kept(R, k)) / ||A||^2``, with ||R||^2 exact
  from the spectrum and ``kept`` measured on all columns of small layers or on a seeded
  sample of whole column blocks (2^16 entries) of large ones.  It is evaluated on a
  geometric grid of 16 ranks (one batched sort of the 16 residuals' group energies) and
  interpolated (linearly in log rank) in between.  Large layers (:func:`_is_large`) take
  the top LS_VECTOR_RANK singular vectors from subspace iteration on the Gram; beyond that
  rank the last grid rank's kept fraction is held.  In the
  data-aware case the proxy puts the sparse support in whitened coordinates (exact for a
  diagonal G).  It upper-bounds the error of the real solver, which iterates further.

A :class:`LayerCurves` holds the Pareto frontier of a layer: candidate configurations
sorted by size with strictly decreasing error, ending with "keep dense" (size m*n,
error 0) unless a smaller configuration is already exact (error below the numerical
resolution of the spectrum, reported as 0).  ``size`` is the stored-value count (:func:`spec.layer_params`); the layer's
MACs are ``spatial * size``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .._blas import blas_controller, blas_threads
from ..structure import Structure
from .spec import LayerSpec, lowrank_params, sparse_nnz

#: error_fn(layer, rank, density) -> relative error (same definition as above).
ErrorFn = Callable[[LayerSpec, int, float], float]

SAMPLE_ENTRIES = 1 << 18
RANK_GRID = 16
#: Entries of the residual sample of the L + S proxy (per grid rank: one sort).
LS_SAMPLE_ENTRIES = 1 << 16
#: Layers with min(m, n) above LARGE_MIN_DIM or a Gram costing more than LARGE_MIN_WORK
#: multiply-adds are "large" (:func:`_is_large`).
LARGE_MIN_DIM = 2048
LARGE_MIN_WORK = 1 << 34
#: Large layers: singular vectors for the L + S proxy (top LS_VECTOR_RANK, subspace
#: iteration with LS_VECTOR_OVERSAMPLE extra columns and LS_VECTOR_ITERS extra passes).
LS_VECTOR_RANK = 512
LS_VECTOR_OVERSAMPLE = 64
LS_VECTOR_ITERS = 1


# ----------------------------------------------------------------------------- cache
@dataclass
class CurveCache:
    """Cache of per-layer spectra and decompositions, keyed by layer name + tensor identity.

    Pass the same instance to several :func:`lowrank_sparse.budget.allocate` calls to
    compute each layer's singular values only once.  Entries are invalidated when the
    weight (or gram) tensor is modified in place (its version counter changes).
    """

    store: dict = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def key(self, layer: LayerSpec, what: str) -> tuple:
        w = layer.weight
        g = layer.gram
        gk = None if g is None else (g.data_ptr(), g._version)
        return (layer.name, w.data_ptr(), w._version, tuple(w.shape), gk, what)

    def get(self, layer: LayerSpec, what: str, fn: Callable[[], object]) -> object:
        k = self.key(layer, what)
        if k in self.store:
            self.hits += 1
            return self.store[k]
        self.misses += 1
        v = fn()
        self.store[k] = v
        return v


# ----------------------------------------------------------------------------- linear algebra
def _chol(gram: torch.Tensor) -> torch.Tensor:
    """(n, n) lower Cholesky factor of gram + jitter (float64)."""
    g = gram.detach().to(torch.float64)
    g = 0.5 * (g + g.T)
    n = g.shape[0]
    scale = float(torch.diagonal(g).mean().clamp_min(1e-300))
    eye = torch.eye(n, dtype=torch.float64)
    for p in range(-10, 0):
        c, info = torch.linalg.cholesky_ex(g + (scale * 10.0**p) * eye)
        if int(info) == 0:
            return c
    raise ValueError("gram is not positive semidefinite (Cholesky failed even with jitter)")


def whitened(layer: LayerSpec, cols: Optional[slice] = None) -> torch.Tensor:
    """A = W C (float32) for the whole layer or a column block (diagonal gram block)."""
    w = layer.weight.detach().to("cpu")
    if cols is not None:
        w = w[:, cols]
    if layer.gram is None:
        return w.to(torch.float32).contiguous()
    g = layer.gram.detach().to("cpu")
    if cols is not None:
        g = g[cols, cols]
    return (w.to(torch.float64) @ _chol(g)).to(torch.float32).contiguous()


_OUTER_BLAS_THREADS: list[Optional[int]] = []


@contextlib.contextmanager
def serial_linalg() -> Iterator[None]:
    """Run torch and SciPy's BLAS/LAPACK single-threaded inside the block; the caller's
    thread counts are restored after.

    The curves are many small eigendecompositions, GEMMs and sorts.  With two OpenMP
    threads on a loaded 2-core machine these were measured 10-100x slower than with one
    (``eigvalsh`` of a 512x512 Gram: 1.4 s vs 0.016 s; 4096x4096: 8.0 s vs 1.6 s); these
    calls gain little from a second thread even on an idle machine.  Only the Gram of a
    large layer (:func:`_is_large`) runs with the BLAS's own thread count
    (:func:`_outer_blas`).  Nested use is fine; not meant for concurrent Python threads."""
    if _OUTER_BLAS_THREADS:  # already serial
        yield
        return
    ctl = blas_controller()
    outer = max((lib.num_threads for lib in ctl.lib_controllers), default=None)
    nt = torch.get_num_threads()
    _OUTER_BLAS_THREADS.append(outer)
    torch.set_num_threads(1)
    try:
        with ctl.limit(limits=1):
            yield
    finally:
        _OUTER_BLAS_THREADS.pop()
        torch.set_num_threads(nt)


@contextlib.contextmanager
def _outer_blas() -> Iterator[None]:
    """Inside :func:`serial_linalg`: SciPy's BLAS with the thread count from outside it."""
    n = _OUTER_BLAS_THREADS[0] if _OUTER_BLAS_THREADS else None
    if n is None or n <= 1:
        yield
        return
    with blas_threads(n):
        yield


def _smaller_gram(x: torch.Tensor) -> torch.Tensor:
    """Gram of the smaller side of x (m, n): x x^T (m <= n) or x^T x, with only the UPPER
    triangle valid (use ``UPLO="U"``).  Level-3 syrk from SciPy's BLAS (half the work of
    a GEMM); float32 or float64 as x."""
    from scipy.linalg import blas

    xn = x.detach().cpu().numpy()
    syrk = blas.dsyrk if xn.dtype == np.float64 else blas.ssyrk
    m, n = xn.shape
    # xn.T is an F-ordered (n, m) view: trans=1 -> (xn.T)^T xn.T = x x^T, trans=0 -> x^T x
    c = syrk(1.0, xn.T, trans=1 if m <= n else 0)
    return torch.from_numpy(np.asarray(c))


def _is_small(m: int, n: int) -> bool:
    """Layers whose Gram is computed in float64 (min(m,n)^2 * max(m,n) <= 2^24)."""
    k = min(m, n)
    return k * k * max(m, n) <= (1 << 24)


def _is_large(m: int, n: int) -> bool:
    """Layers (VGG's 4096x4096 and 4096x25088) whose Gram runs with the BLAS's own threads
    and whose singular vectors (L + S proxy only) come from subspace iteration."""
    k = min(m, n)
    return k > LARGE_MIN_DIM or k * k * max(m, n) > LARGE_MIN_WORK


def _noise_floor(ev: np.ndarray, small: bool, k: int) -> float:
    """Relative error below which a rank tail is numerical noise: float64 Gram ~1e-7,
    float32 Gram ~k * 1.2e-7 * s_1^2 absolute per eigenvalue."""
    tot = float(ev.sum())
    if tot <= 0.0:
        return 0.0
    eps = 1e-7 if small else 1.2e-7 * k
    return max(math.sqrt(eps * float(ev[0]) / tot), 1e-7)


def _gram(layer: LayerSpec, cache: CurveCache) -> torch.Tensor:
    """Cached (k, k) Gram of the smaller side of the whitened layer A (k = min(m, n)), upper
    triangle valid; float64 for small layers, float32 else."""

    def compute() -> torch.Tensor:
        a = cache.get(layer, "A", lambda: whitened(layer))
        m, n = a.shape  # type: ignore[union-attr]
        x = a.to(torch.float64) if _is_small(m, n) else a  # type: ignore[union-attr]
        if _is_large(m, n):
            with _outer_blas():
                return _smaller_gram(x)
        return _smaller_gram(x)

    return cache.get(layer, "gram", compute)  # type: ignore[return-value]


def _orth(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (k, l) of the columns of y (k, l), k >= l: Householder QR, float32."""
    return torch.linalg.qr(y.to(torch.float32))[0]


def _top_vectors(a: torch.Tensor, gram: torch.Tensor, K: int, seed: int) -> torch.Tensor:
    """(m, K') orthonormal approximations of the top-K left singular vectors of a (m, n)
    from its smaller-side Gram (k, k, upper triangle valid): subspace iteration on the Gram
    (ssymm, reads the upper triangle) with K + LS_VECTOR_OVERSAMPLE columns and
    LS_VECTOR_ITERS extra passes, then Rayleigh-Ritz.  Each pass is two power steps of a.
    The vectors only place the L + S proxy's residual; the singular values themselves
    come from the exact ``eigvalsh``."""
    from scipy.linalg import blas

    m, n = a.shape
    gn = gram.numpy()
    symm = blas.dsymm if gn.dtype == np.float64 else blas.ssymm

    def gmul(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(symm(1.0, gn, x.to(gram.dtype).numpy(), side=0, lower=0)))

    k = gn.shape[0]
    l = min(k, K + LS_VECTOR_OVERSAMPLE)
    gen = torch.Generator().manual_seed(seed)
    y = gmul(torch.randn(k, l, generator=gen))
    for _ in range(LS_VECTOR_ITERS):
        y = gmul(_orth(y))
    q = _orth(y)
    b = (q.T.to(torch.float64) @ gmul(q).to(torch.float64))
    ev, w = torch.linalg.eigh(0.5 * (b + b.T))
    ev, w = ev.flip(0)[:K].clamp_min(0.0), w.flip(1)[:, :K]
    v = q @ w.to(torch.float32)  # (k, K) top eigenvectors of the Gram
    if m <= n:
        return v.contiguous()
    keep = ev > float(ev[0]) * 1e-10 if ev.numel() else ev > 0
    u = (a.to(torch.float32) @ v[:, keep]) / ev[keep].sqrt().to(torch.float32)
    return _orth(u).contiguous()


def spectrum(layer: LayerSpec, cache: CurveCache, vectors: bool = False, seed: int = 0) -> dict:
    """The layer's whitened spectrum, cached: {"tails": t[j] = sum_{i>j} s_i^2 for
    j = 0..min(m, n), "total", "noise" (tail energy below which it is numerical noise),
    "u": (m, K) left singular vectors or None, "s2": squared singular values (desc)}.

    Exact: one syrk Gram of the smaller side (float64 for small layers, float32 else) and
    ``eigvalsh`` (``eigh`` with ``vectors``), single-threaded (:func:`serial_linalg`).  For
    large layers (:func:`_is_large`) ``vectors`` gives the top LS_VECTOR_RANK vectors
    from subspace iteration on the same Gram, the values stay exact."""
    m, n = layer.m, layer.n
    p = min(m, n)
    small = _is_small(m, n)

    def pack(s2: np.ndarray, u: Optional[torch.Tensor]) -> dict:
        total = float(s2.sum())
        t = np.maximum(total - np.concatenate([[0.0], np.cumsum(s2)]), 0.0)
        if len(t) < p + 1:
            t = np.concatenate([t, np.zeros(p + 1 - len(t))])
        floor = _noise_floor(s2, small, p)
        return {"tails": t, "total": total, "noise": floor**2 * total, "u": u, "s2": s2}

    def values() -> dict:
        g = _gram(layer, cache)
        with serial_linalg():
            ev = torch.linalg.eigvalsh(g, UPLO="U").flip(0).clamp_min(0.0).to(torch.float64).numpy()
        return pack(ev, None)

    def with_vectors() -> dict:
        a: torch.Tensor = cache.get(layer, "A", lambda: whitened(layer))  # type: ignore[assignment]
        g = _gram(layer, cache)
        with serial_linalg():
            if _is_large(m, n):
                sp = cache.get(layer, "spectrum", values)
                u = _top_vectors(a, g, min(p, LS_VECTOR_RANK), seed)
                return {**sp, "u": u}  # type: ignore[dict-item]
            ev, vec = torch.linalg.eigh(g, UPLO="U")
            ev, vec = ev.flip(0).clamp_min(0.0), vec.flip(1)
            if m <= n:
                u = vec
            else:
                tol = float(ev[0]) * 1e-10 if ev.numel() else 0.0
                keep = int((ev > tol).sum())
                u = (a.to(vec.dtype) @ vec[:, :keep]) / ev[:keep].sqrt()
            return pack(ev.to(torch.float64).numpy(), u.to(torch.float32).contiguous())

    kv = cache.key(layer, "spectrum+u")
    if vectors or kv in cache.store:
        return cache.get(layer, "spectrum+u", with_vectors)  # type: ignore[return-value]
    return cache.get(layer, "spectrum", values)  # type: ignore[return-value]


def _block_grams(layer: LayerSpec, g: int, cache: CurveCache) -> tuple[torch.Tensor, bool]:
    """(g, k, k) smaller-side Grams of the g whitened column slices (k = min(m, n/g)), full
    symmetric, and whether they are float64.

    Without a gram and with slices at least m wide these are W_b W_b^T: one batched GEMM
    (m^2 n multiply-adds for all slices) at the finest requested slice count, coarser
    counts by summing neighbouring blocks (contiguous slices nest).  Otherwise each slice
    is whitened with its diagonal gram block and its smaller Gram formed directly."""
    m, n = layer.m, layer.n
    nb = n // g
    if layer.gram is None and nb >= m:
        for key, h in list(cache.store.items()):
            # a cached finer block Gram of this layer: sum neighbouring blocks
            if key[:-1] == cache.key(layer, "")[:-1] and isinstance(key[-1], str) and key[-1].startswith("blockgram"):
                f = int(key[-1][len("blockgram"):])
                if f > g and f % g == 0:
                    cache.hits += 1
                    return h.reshape(g, f // g, m, m).sum(1), h.dtype == torch.float64

        def compute() -> torch.Tensor:
            w = layer.weight.detach().to("cpu", torch.float64 if _is_small(m, n) else torch.float32)
            wb = w.reshape(m, g, nb).permute(1, 0, 2)
            return torch.bmm(wb, wb.transpose(1, 2))

        h: torch.Tensor = cache.get(layer, f"blockgram{g}", compute)  # type: ignore[assignment]
        return h, h.dtype == torch.float64
    small = _is_small(m, nb)
    dt = torch.float64 if small else torch.float32
    blocks = [whitened(layer, slice(i * nb, (i + 1) * nb)).to(dt) for i in range(g)]
    if _is_large(m, nb):
        with _outer_blas():
            return torch.stack([_smaller_gram(b) for b in blocks]), small
    a = torch.stack(blocks)
    return (torch.bmm(a, a.transpose(1, 2)) if m <= nb else torch.bmm(a.transpose(1, 2), a)), small


def _slice_tails(layer: LayerSpec, g: int, cache: CurveCache) -> tuple[np.ndarray, float, float]:
    """(t[j] = sum over the g slices of their rank-j tails, j = 0..min(m, n/g); total
    energy; noise energy) from one batched ``eigvalsh`` of the slices' Grams."""
    h, small = _block_grams(layer, g, cache)
    k = h.shape[-1]
    ev = torch.linalg.eigvalsh(h, UPLO="U").flip(-1).clamp_min(0.0).to(torch.float64).numpy()  # (g, k) desc
    tot = ev.sum(1)
    tails = np.maximum(tot[:, None] - np.concatenate([np.zeros((g, 1)), np.cumsum(ev, 1)], 1), 0.0).sum(0)
    noise = sum(_noise_floor(ev[b], small, k) ** 2 * float(tot[b]) for b in range(g))
    return tails, float(tot.sum()), noise


# ----------------------------------------------------------------------------- sparse energies
def _sample_cols(layer: LayerSpec, st: Structure, seed: int, entries: int = SAMPLE_ENTRIES) -> Optional[torch.Tensor]:
    """Indices of sampled columns (whole blocks, about ``entries`` entries) or None for all columns."""
    m, n = layer.m, layer.n
    if m * n <= entries:
        return None
    w = st.block if st.kind == "channel" else (st.m if st.kind == "nm" else 1)
    nblocks = n // w
    want = max(1, math.ceil(entries / (m * w)))
    if want >= nblocks:
        return None
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randperm(nblocks, generator=gen)[:want].sort().values
    return (blocks[:, None] * w + torch.arange(w)[None, :]).reshape(-1)


def _group_energies(r: torch.Tensor, st: Structure, sort: bool = True) -> torch.Tensor:
    """Energies (sum of squares) of the groups of st (not N:M) inside a (m, c) block r:
    float64 sorted descending, or float32 in group order with ``sort=False``."""
    e = r.to(torch.float32).square()
    if st.kind == "row":
        g = e.sum(1)
    elif st.kind == "column":
        g = e.sum(0)
    elif st.kind == "channel":
        g = e.reshape(e.shape[0], -1, st.block).sum((0, 2))
    else:
        g = e.reshape(-1)
    if not sort:
        return g
    return g.sort(descending=True).values.to(torch.float64)


class _Kept:
    """Fraction of energy kept by the top fraction q of groups (from a sorted sample)."""

    def __init__(self, sorted_energies: torch.Tensor) -> None:
        c = torch.cat([torch.zeros(1, dtype=torch.float64), sorted_energies.cumsum(0)])
        self.c = c.numpy()
        self.total = float(self.c[-1])

    def __call__(self, q: np.ndarray | float) -> np.ndarray:
        if self.total <= 0.0:
            return np.ones_like(np.asarray(q, dtype=np.float64))
        ns = len(self.c) - 1
        x = np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0) * ns
        return np.interp(x, np.arange(ns + 1), self.c) / self.total


def _kept_nm(r: torch.Tensor, st: Structure) -> float:
    """Fraction of the energy of r kept by its best N:M pattern (rows, M consecutive cols)."""
    e = r.to(torch.float64).square()
    tot = float(e.sum())
    if tot <= 0.0:
        return 1.0
    g = e.reshape(e.shape[0], -1, st.m)
    kept = float(g.topk(st.n, dim=2).values.sum())
    return kept / tot


# ----------------------------------------------------------------------------- frontier
@dataclass
class LayerCurves:
    """Pareto frontier of one layer's configurations (ascending size, strictly descending error).

    Arrays (all of the same length F): sizes (stored values, int64), errors (float64),
    ranks, slices, nnz (int64), densities (float64), dense (bool: keep the original layer).
    The last entry is always "keep dense" (size m*n, error 0).
    """

    layer: LayerSpec
    sizes: np.ndarray
    errors: np.ndarray
    ranks: np.ndarray
    slices: np.ndarray
    nnz: np.ndarray
    densities: np.ndarray
    dense: np.ndarray

    @property
    def spatial(self) -> int:
        return self.layer.spatial

    def __len__(self) -> int:
        return len(self.sizes)

    def index_for_error(self, eps: float) -> int:
        """Smallest frontier index whose error is <= eps."""
        # errors strictly decreasing -> searchsorted on the negated array
        i = int(np.searchsorted(-self.errors, -eps, side="left"))
        return min(i, len(self.sizes) - 1)

    def index_for_size(self, cap: float) -> int:
        """Largest index with size <= cap (0 if even the smallest is larger)."""
        i = int(np.searchsorted(self.sizes, cap, side="right")) - 1
        return max(i, 0)


def _frontier(layer: LayerSpec, sizes, errors, ranks, slices, nnz, dens) -> LayerCurves:
    dense_size = layer.m * layer.n
    sizes = np.concatenate([np.asarray(sizes, dtype=np.int64).reshape(-1), [dense_size]])
    errors = np.concatenate([np.asarray(errors, dtype=np.float64).reshape(-1), [0.0]])
    ranks = np.concatenate([np.asarray(ranks, dtype=np.int64).reshape(-1), [0]])
    slices = np.concatenate([np.asarray(slices, dtype=np.int64).reshape(-1), [1]])
    nnz = np.concatenate([np.asarray(nnz, dtype=np.int64).reshape(-1), [0]])
    dens = np.concatenate([np.asarray(dens, dtype=np.float64).reshape(-1), [0.0]])
    dense = np.zeros(len(sizes), dtype=bool)
    dense[-1] = True
    ok = (sizes < dense_size) | dense
    ok &= np.isfinite(errors)
    idx = np.nonzero(ok)[0]
    # sort by size, ties: lower error first, then prefer fewer slices / less sparse
    order = idx[np.lexsort((nnz[idx], slices[idx], errors[idx], sizes[idx]))]
    keep = []
    best = math.inf
    for i in order:
        e = float(errors[i])
        if e < best - 1e-12 * max(1.0, best if math.isfinite(best) else 1.0):
            keep.append(i)
            best = e
    keep = np.asarray(keep, dtype=np.int64)
    err = np.clip(errors[keep], 0.0, 1.0) * layer.error_scale
    return LayerCurves(layer, sizes[keep], err, ranks[keep], slices[keep], nnz[keep], dens[keep], dense[keep])


def _slice_options(layer: LayerSpec, candidates: Sequence[int]) -> list[int]:
    out = []
    for g in candidates:
        g = int(g)
        if g >= 1 and layer.in_channels % g == 0 and g <= layer.in_channels and g not in out:
            out.append(g)
    return out or [1]


def rank_tails(layer: LayerSpec, g: int, cache: CurveCache) -> tuple[np.ndarray, float]:
    """(tail energies t[j] = sum over slices of sum_{i>j} s_i^2 for j = 0..jmax, total energy).

    g = 1 shares the layer's cached :func:`spectrum`; g > 1 takes all g slices' spectra
    from one batched eigendecomposition (:func:`_slice_tails`).  Tails below the numerical
    resolution are reported as exactly 0."""

    def compute():
        with serial_linalg():
            if g == 1:
                sp = spectrum(layer, cache)
                tails, total, noise = sp["tails"], sp["total"], sp["noise"]
            else:
                tails, total, noise = _slice_tails(layer, g, cache)
        tails = np.where(tails <= noise, 0.0, tails)  # below numerical resolution: exact
        return tails, total

    return cache.get(layer, f"tails{g}", compute)  # type: ignore[return-value]


def _rank_configs(layer: LayerSpec, gs: Sequence[int], cache: CurveCache):
    m, n = layer.m, layer.n
    S, E, R, G = [], [], [], []
    # largest slice count first: the smaller ones that divide it reuse its block Grams
    for g in sorted(gs, reverse=True):
        rank_tails(layer, g, cache)
    for g in gs:
        tails, total = rank_tails(layer, g, cache)
        jmax = len(tails) - 1
        j = np.arange(1, jmax + 1, dtype=np.int64)
        size = j * (g * m + n)
        err = np.sqrt(tails[1:] / total) if total > 0 else np.zeros(jmax)
        S.append(size); E.append(err); R.append(j); G.append(np.full(jmax, g, dtype=np.int64))
    if not S:
        return [np.zeros(0, np.int64)] * 3 + [np.zeros(0)]
    return np.concatenate(S), np.concatenate(E), np.concatenate(R), np.concatenate(G)


def _q_grid(num_groups: int) -> np.ndarray:
    """Kept-group counts to evaluate: all when few, else a dense grid."""
    if num_groups <= 4096:
        return np.arange(1, num_groups, dtype=np.int64)
    q = np.unique(np.concatenate([np.linspace(0.0, 1.0, 801)[1:-1], np.geomspace(1e-5, 2e-3, 60)]))
    k = np.unique(np.round(q * num_groups).astype(np.int64))
    return k[(k >= 1) & (k < num_groups)]


def sparse_input(layer: LayerSpec) -> torch.Tensor:
    """W with columns scaled by sqrt(diag G) (W itself without a gram), float32."""
    w = layer.weight.detach().to("cpu", torch.float32)
    if layer.gram is None:
        return w
    d = torch.diagonal(layer.gram.detach().to("cpu", torch.float64)).clamp_min(0.0).sqrt().to(torch.float32)
    return w * d[None, :]


def _sparse_configs(layer: LayerSpec, st: Structure, cache: CurveCache, seed: int):
    m, n = layer.m, layer.n
    a = sparse_input(layer)
    if st.kind == "nm":
        rows = a
        if m * n > SAMPLE_ENTRIES:
            gen = torch.Generator().manual_seed(seed)
            nr = max(1, SAMPLE_ENTRIES // n)
            rows = a[torch.randperm(m, generator=gen)[:nr]]
        kept = _kept_nm(rows, st)
        return (np.array([m * n * st.n // st.m]), np.array([math.sqrt(max(0.0, 1.0 - kept))]),
                np.array([0]), np.array([1]), np.array([m * n * st.n // st.m]), np.array([st.n / st.m]))
    if st.kind == "unstructured" and m * n > SAMPLE_ENTRIES:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, m * n, (SAMPLE_ENTRIES,), generator=gen)
        energies = a.reshape(-1)[idx].to(torch.float64).square().sort(descending=True).values
    else:
        energies = _group_energies(a, st)
    kept = _Kept(energies)
    ng = st.num_groups(m, n)
    gs = st.group_size(m, n)
    k = _q_grid(ng)
    err = np.sqrt(np.maximum(0.0, 1.0 - kept(k / ng)))
    nnz = k * gs
    return nnz, err, np.zeros_like(k), np.ones_like(k), nnz, nnz / (m * n)


def _ls_configs(layer: LayerSpec, st: Structure, shares: Sequence[float], cache: CurveCache, seed: int):
    """Proxy configurations with a sparse share > 0 (g = 1)."""
    m, n = layer.m, layer.n
    mn = m * n
    rmax = int(mn // (m + n))
    shares = [float(s) for s in shares if s > 0.0]
    if st.kind == "nm":
        shares = [1.0]  # marker: S is the fixed N:M pattern
    if rmax < 1 or not shares:
        return None
    a = cache.get(layer, "A", lambda: whitened(layer))
    sp = spectrum(layer, cache, vectors=True, seed=seed)
    u, total, tails = sp["u"], sp["total"], sp["tails"]
    if total <= 0.0:
        return None
    t1, total1 = rank_tails(layer, 1, cache)  # noise-clipped rank-only tails
    p = u.shape[1]
    rg = np.unique(np.round(np.geomspace(1, max(1, min(rmax, p)), RANK_GRID)).astype(np.int64))
    cols = _sample_cols(layer, st, seed, LS_SAMPLE_ENTRIES)
    a_j = a if cols is None else a[:, cols]
    proj = u[:, : int(rg[-1])].T @ a_j  # (p', c)
    r_res = a_j.clone()
    prev = 0
    ng, gsz = st.num_groups(m, n), st.group_size(m, n)
    nm_kept: list[float] = []
    energies: list[torch.Tensor] = []
    for r in rg:
        r = int(r)
        r_res -= u[:, prev:r] @ proj[prev:r]
        prev = r
        if st.kind == "nm":
            nm_kept.append(_kept_nm(r_res, st))
        else:
            energies.append(_group_energies(r_res, st, sort=False))
    if st.kind != "nm":
        # all grid ranks at once: one sort + cumsum of the (grid, groups) residual energies
        e = np.sort(torch.stack(energies).numpy(), axis=1)[:, ::-1]  # float32 sort (SIMD), desc
        cum = np.concatenate([np.zeros((len(rg), 1)), np.cumsum(e, axis=1, dtype=np.float64)], axis=1)
        tot_r = cum[:, -1:]
        ns = e.shape[1]

        def kept_grid(q: np.ndarray) -> np.ndarray:
            """(grid, len(q)) fraction of each grid residual's energy in its top q groups."""
            x = np.clip(q, 0.0, 1.0) * ns
            i0 = np.minimum(np.floor(x).astype(np.int64), ns - 1)
            w = x - i0
            c = cum[:, i0] * (1.0 - w) + cum[:, i0 + 1] * w
            return np.where(tot_r > 0.0, c / np.where(tot_r > 0.0, tot_r, 1.0), 1.0)
    j = np.arange(1, rmax + 1, dtype=np.int64)
    # position of every rank between the grid ranks (log scale); beyond the last grid
    # rank (large layers: top LS_VECTOR_RANK vectors only) the last kept fraction is held
    lr = np.log(rg.astype(np.float64))
    pos = np.interp(np.log(j), lr, np.arange(len(rg), dtype=np.float64))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(rg) - 1)
    wt = pos - lo
    rank_err = np.sqrt(t1[np.minimum(j, len(t1) - 1)] / total1)
    tj = tails[np.minimum(j, len(tails) - 1)]
    S, E, R, G, NZ, D = [], [], [], [], [], []
    for sh in shares:
        if st.kind == "nm":
            nz = np.full_like(j, mn * st.n // st.m)
            fr = np.array(nm_kept)
            frac = (1.0 - wt) * fr[lo] + wt * fr[hi]
        else:
            d = sh / (1.0 - sh) * j * (m + n) / mn
            nz = np.clip(np.floor(d * mn / gsz + 0.5), 0, ng).astype(np.int64) * gsz
            q = nz / gsz / ng
            fr = kept_grid(q)  # (grid, ranks)
            idx = np.arange(len(j))
            frac = (1.0 - wt) * fr[lo, idx] + wt * fr[hi, idx]
        # one alternating step: S keeps the top groups of the rank-j residual, whose kept
        # fraction is measured at the grid ranks and interpolated (log rank) in between
        err = np.sqrt(np.maximum(0.0, tj * (1.0 - frac) / total))
        err = np.minimum(err, rank_err)  # never claim worse than rank-only at a larger size
        size = j * (m + n) + nz
        okk = (nz > 0) & (size < mn)
        S.append(size[okk]); E.append(err[okk]); R.append(j[okk]); G.append(np.ones(int(okk.sum()), np.int64))
        NZ.append(nz[okk]); D.append(nz[okk] / mn)
    return (np.concatenate(S), np.concatenate(E), np.concatenate(R), np.concatenate(G),
            np.concatenate(NZ), np.concatenate(D))


def build_curves(layer: LayerSpec, mode: str, structure: Structure, *, slice_candidates: Sequence[int] = (1,),
                 sparse_shares: Sequence[float] = (0.0, 0.1, 0.25, 0.5), cache: Optional[CurveCache] = None,
                 seed: int = 0) -> LayerCurves:
    """Frontier of a layer for ``mode`` ("rank_only" | "sparse_only" | "lowrank_sparse").

    slice_candidates: ALDS slice counts to try (kept if they divide in_channels).
    sparse_shares: fractions of the layer's budget given to S in "lowrank_sparse" mode
        (0 = pure low rank, which also uses the slice candidates; >0 uses slices=1).
    """
    cache = cache if cache is not None else CurveCache()
    with serial_linalg():
        return _build_curves(layer, mode, structure, slice_candidates, sparse_shares, cache, seed)


def _build_curves(layer: LayerSpec, mode: str, structure: Structure, slice_candidates: Sequence[int],
                  sparse_shares: Sequence[float], cache: CurveCache, seed: int) -> LayerCurves:
    parts = []
    if (mode == "lowrank_sparse" and any(s > 0.0 for s in sparse_shares) and not _is_large(layer.m, layer.n)
            and layer.m * layer.n // (layer.m + layer.n) >= 1):
        spectrum(layer, cache, vectors=True, seed=seed)  # one eigh serves the rank and the L + S configs
    if mode in ("rank_only", "lowrank_sparse"):
        gs = _slice_options(layer, slice_candidates)
        if mode == "rank_only" or any(s == 0.0 for s in sparse_shares):
            s, e, r, g = _rank_configs(layer, gs, cache)
            parts.append((s, e, r, g, np.zeros_like(s), np.zeros(len(s))))
        if mode == "lowrank_sparse":
            key = f"ls:{structure.name}:{structure.block}:{tuple(float(x) for x in sparse_shares)}:{seed}"
            ls = cache.get(layer, key, lambda: _ls_configs(layer, structure, sparse_shares, cache, seed))
            if ls is not None:
                parts.append(ls)
    elif mode == "sparse_only":
        key = f"sparse:{structure.name}:{structure.block}:{seed}"
        parts.append(cache.get(layer, key, lambda: _sparse_configs(layer, structure, cache, seed)))
    else:
        raise ValueError(f"mode must be 'lowrank_sparse', 'rank_only' or 'sparse_only', got {mode!r}")
    cols = list(zip(*parts)) if parts else [[np.zeros(0)]] * 6
    arrs = [np.concatenate([np.asarray(x) for x in c]) for c in cols]
    return _frontier(layer, *arrs)


def config_error(layer: LayerSpec, rank: int, density: float, slices: int, structure: Structure,
                 cache: CurveCache, error_fn: Optional[ErrorFn] = None) -> float:
    """Predicted relative error of one explicit configuration (used for overrides).

    Exact for rank only / sparse only; error_fn (else the proxy curves) for L + S; times
    the layer's ``error_scale`` except for error_fn's (already post-activation) value."""
    with serial_linalg():
        return _config_error(layer, rank, density, slices, structure, cache, error_fn)


def _config_error(layer: LayerSpec, rank: int, density: float, slices: int, structure: Structure,
                  cache: CurveCache, error_fn: Optional[ErrorFn]) -> float:
    m, n = layer.m, layer.n
    nnz = sparse_nnz(m, n, density, structure)
    if nnz == 0:
        if rank <= 0:
            return layer.error_scale
        tails, total = rank_tails(layer, slices, cache)
        j = min(rank, len(tails) - 1)
        return layer.error_scale * math.sqrt(tails[j] / total) if total > 0 else 0.0
    if error_fn is not None:
        return float(error_fn(layer, rank, density))
    if rank <= 0:
        cur = build_curves(layer, "sparse_only", structure, cache=cache)
        i = int(np.argmin(np.abs(cur.nnz[:-1] - nnz))) if len(cur) > 1 else 0
        return float(cur.errors[i])
    cur = build_curves(layer, "lowrank_sparse", structure, sparse_shares=(0.1, 0.25, 0.5), cache=cache)
    size = lowrank_params(m, n, rank, slices) + nnz
    return float(cur.errors[cur.index_for_size(size)])


def activation_error_scale(weight: torch.Tensor, bias: Optional[torch.Tensor], X: torch.Tensor,
                           activation: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``error_scale`` of a layer y = act(W x + b) from input samples.

    For a small weight error dW, act(y + dW x) - act(y) ~ act'(y) * (dW x), so with the
    error spread evenly over the outputs
    ``||d act||_F / ||act(Y)||_F ~ sqrt(mean(act'(Y)^2)) * ||W X||_F / ||act(Y)||_F
    * (||dW X||_F / ||W X||_F)``: the scale maps the relative pre-activation error (the
    curves' quantity) to the relative post-activation error.  Layers whose outputs are
    mostly cut by a ReLU (||act(Y)|| << ||W X||) get a scale > 1.

    Args:
        weight: (m, n) weight as the activation sees it (BatchNorm folded).
        bias: (m,) bias (folded) or None.
        X: (n, s) input columns.
        activation: elementwise function (torch -> torch).

    Returns:
        the scale (float64 arithmetic); 1.0 when the outputs are all zero.
    """
    w = weight.detach().to("cpu", torch.float64)
    x = X.detach().to("cpu", torch.float64)
    if w.ndim != 2 or x.ndim != 2 or w.shape[1] != x.shape[0]:
        raise ValueError(f"weight (m, n) and X (n, s) do not match: {tuple(w.shape)} and {tuple(x.shape)}")
    lin = w @ x
    y = lin if bias is None else lin + bias.detach().to("cpu", torch.float64)[:, None]
    a = activation(y)
    h = 1e-6 * max(float(y.abs().max()), 1e-30)
    d = (activation(y + h) - activation(y - h)) / (2.0 * h)
    na, nl = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(lin))
    if na <= 0.0 or nl <= 0.0:
        return 1.0
    scale = math.sqrt(float(d.square().mean())) * nl / na
    return scale if math.isfinite(scale) and scale > 0.0 else 1.0
