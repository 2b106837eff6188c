"""Spectra of the (whitened) layer weights, for the error curves of :mod:`.curves`.

The Cholesky whitening of a layer's input Gram, the singular values of ``W G^{1/2}``
(from the smaller Gram and ``eigvalsh``, float64 for small layers), the per-slice
spectra of ALDS column slicing, the top singular vectors of large layers by subspace
iteration, and the :class:`CurveCache` that keeps them per layer.  All small linear
algebra runs single-threaded (:func:`serial_linalg`).  See :mod:`.curves` for how the
spectra become rank errors.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .._blas import blas_controller, blas_threads
from .spec import LayerSpec

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

    The allocator calls :meth:`release` on each layer once its curves are built: the
    work arrays of the size of the weight (whitened weight, its Gram, singular vectors,
    slice Grams) are dropped and only the values and curves kept, so the allocation
    holds one layer's work arrays at a time.  ``keep_work=True`` keeps them (a later
    call with other sparse shares or structures then skips recomputing them).
    """

    store: dict = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    keep_work: bool = False

    def release(self, layer: LayerSpec) -> None:
        """Drop ``layer``'s weight-sized work arrays (unless ``keep_work``); a spectrum
        with singular vectors keeps its values.  Results are unchanged: a later need
        recomputes them (deterministically)."""
        if self.keep_work:
            return
        base = self.key(layer, "")[:-1]
        for k in [k for k in self.store if k[:-1] == base]:
            what = k[-1]
            if what == "spectrum+u":
                self.store.setdefault(base + ("spectrum",), {**self.store[k], "u": None})
            if what in ("A", "gram", "spectrum+u") or what.startswith("blockgram"):
                del self.store[k]

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
