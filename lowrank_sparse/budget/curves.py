"""Per-layer error curves: relative error of every candidate configuration of a layer.

The spectra come from :mod:`.spectra` (whitening, singular values, slices, the cache),
the sparse parts' kept energies from :mod:`.probes`; this module turns them into
candidate configurations and their Pareto frontier.

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
MACs are ``spatial * size``.  :func:`candidate_configs` gives every candidate before
that choice, and :func:`frontier` the Pareto frontier under another cost (for example
predicted seconds, where the most accurate split of a size need not be the fastest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..structure import Structure
from .probes import SAMPLE_ENTRIES, _group_energies, _Kept, _kept_nm, _q_grid, _sample_cols, sparse_input
from .spec import LayerSpec, lowrank_params, sparse_nnz
from .spectra import CurveCache, _is_large, rank_tails, serial_linalg, spectrum, whitened

#: error_fn(layer, rank, density) -> relative error (same definition as above).
ErrorFn = Callable[[LayerSpec, int, float], float]

RANK_GRID = 16
#: Entries of the residual sample of the L + S proxy (per grid rank: one sort).
LS_SAMPLE_ENTRIES = 1 << 16


# ----------------------------------------------------------------------------- frontier
@dataclass
class LayerCurves:
    """Pareto frontier of one layer's configurations (ascending cost, strictly descending
    error; the cost is the size unless built by :func:`frontier` with another one, and
    then the sizes need not ascend).

    Arrays (all of the same length F): sizes (stored values, int64), errors (float64),
    ranks, slices, nnz (int64), densities (float64), dense (bool: keep the original layer).
    The size frontier's last entry is always "keep dense" (size m*n, error 0).
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

    def weighted(self, weight: float) -> "LayerCurves":
        """The same frontier with its errors times ``weight`` (itself when 1)."""
        if weight == 1.0:
            return self
        return LayerCurves(self.layer, self.sizes, self.errors * weight, self.ranks, self.slices, self.nnz,
                           self.densities, self.dense)

    def index_for_error(self, eps: float) -> int:
        """Smallest frontier index whose error is <= eps."""
        # errors strictly decreasing -> searchsorted on the negated array
        i = int(np.searchsorted(-self.errors, -eps, side="left"))
        return min(i, len(self.sizes) - 1)

    def index_for_size(self, cap: float) -> int:
        """Largest index (lowest error) with size <= cap (0 if none is that small)."""
        if len(self.sizes) < 2 or bool(np.all(self.sizes[1:] >= self.sizes[:-1])):
            return max(int(np.searchsorted(self.sizes, cap, side="right")) - 1, 0)
        fit = np.nonzero(self.sizes <= cap)[0]  # a frontier by another cost
        return int(fit[-1]) if len(fit) else 0


class Configs(NamedTuple):
    """Candidate configurations of a layer (aligned arrays, any order, without "keep
    dense"): stored values, relative error (before ``error_scale``), rank, slice count,
    S nonzeros, S density."""

    sizes: np.ndarray
    errors: np.ndarray
    ranks: np.ndarray
    slices: np.ndarray
    nnz: np.ndarray
    densities: np.ndarray

    def subset(self, mask: np.ndarray) -> "Configs":
        return Configs(*(a[mask] for a in self))


def frontier(layer: LayerSpec, cfg: Configs, cost: Optional[np.ndarray] = None,
             dense_cost: Optional[float] = None) -> LayerCurves:
    """Pareto frontier of ``cfg`` plus "keep dense": ascending ``cost`` (default: the
    sizes; the dense entry then costs m*n) with strictly decreasing error.  ``cost``
    (aligned with ``cfg``) and ``dense_cost`` are given together."""
    dense_size = layer.m * layer.n
    if cost is None:
        cost, dense_cost = cfg.sizes, dense_size
    elif dense_cost is None or len(cost) != len(cfg.sizes):
        raise ValueError("frontier: cost needs one entry per configuration and a dense_cost")
    sizes = np.concatenate([np.asarray(cfg.sizes, dtype=np.int64).reshape(-1), [dense_size]])
    errors = np.concatenate([np.asarray(cfg.errors, dtype=np.float64).reshape(-1), [0.0]])
    ranks = np.concatenate([np.asarray(cfg.ranks, dtype=np.int64).reshape(-1), [0]])
    slices = np.concatenate([np.asarray(cfg.slices, dtype=np.int64).reshape(-1), [1]])
    nnz = np.concatenate([np.asarray(cfg.nnz, dtype=np.int64).reshape(-1), [0]])
    dens = np.concatenate([np.asarray(cfg.densities, dtype=np.float64).reshape(-1), [0.0]])
    key = np.concatenate([np.asarray(cost, dtype=np.float64).reshape(-1), [float(dense_cost)]])
    dense = np.zeros(len(sizes), dtype=bool)
    dense[-1] = True
    ok = (sizes < dense_size) | dense
    ok &= np.isfinite(errors) & np.isfinite(key)
    idx = np.nonzero(ok)[0]
    # sort by cost, ties: lower error first, then smaller, then fewer slices / less sparse
    order = idx[np.lexsort((nnz[idx], slices[idx], sizes[idx], errors[idx], key[idx]))]
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
    """Proxy configurations with a sparse share > 0 (g = 1): (sizes, errors, ranks,
    slices, nnz, densities), or None when the layer has none."""
    m, n = layer.m, layer.n
    rmax = int(m * n // (m + n))
    shares = [float(s) for s in shares if s > 0.0]
    if st.kind == "nm":
        shares = [1.0]  # marker: S is the fixed N:M pattern
    if rmax < 1 or not shares:
        return None
    a = cache.get(layer, "A", lambda: whitened(layer))
    sp = spectrum(layer, cache, vectors=True, seed=seed)
    if sp["total"] <= 0.0:
        return None
    t1, total1 = rank_tails(layer, 1, cache)  # noise-clipped rank-only tails
    rg = np.unique(np.round(np.geomspace(1, max(1, min(rmax, sp["u"].shape[1])), RANK_GRID)).astype(np.int64))
    kept = _grid_kept(layer, st, a, sp["u"], rg, seed)
    j = np.arange(1, rmax + 1, dtype=np.int64)
    interp = _log_rank_interp(rg, j)
    rank_err = np.sqrt(t1[np.minimum(j, len(t1) - 1)] / total1)
    tail = sp["tails"][np.minimum(j, len(sp["tails"]) - 1)]
    parts = [_share_configs(layer, st, sh, kept, j, interp, (tail, sp["total"]), rank_err) for sh in shares]
    return tuple(np.concatenate(col) for col in zip(*parts))


def _grid_kept(layer: LayerSpec, st: Structure, a: torch.Tensor, u: torch.Tensor, rg: np.ndarray,
               seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Kept-energy fractions of the residuals R_r = A - U_r U_r^T A at the grid ranks rg.

    a: (m, n) whitened weight; u: (m, p) its top left singular vectors.  Returns
    kept(q) -> (grid, len(q)): the fraction of each R_r's energy in its top q * groups
    (fractions q in [0, 1]); for N:M (no q) kept() -> (grid,) the N:M pattern's fraction.
    Measured on a seeded sample of columns for large layers.
    """
    cols = _sample_cols(layer, st, seed, LS_SAMPLE_ENTRIES)
    a_j = a if cols is None else a[:, cols]
    proj = u[:, : int(rg[-1])].T @ a_j  # (p', c)
    r_res = a_j.clone()
    prev = 0
    per_rank = []
    for r in rg:
        r = int(r)
        r_res -= u[:, prev:r] @ proj[prev:r]
        prev = r
        per_rank.append(_kept_nm(r_res, st) if st.kind == "nm" else _group_energies(r_res, st, sort=False))
    if st.kind == "nm":
        nm = np.array(per_rank)
        return lambda q=None: nm
    # all grid ranks at once: one sort + cumsum of the (grid, groups) residual energies
    e = np.sort(torch.stack(per_rank).numpy(), axis=1)[:, ::-1]  # float32 sort (SIMD), desc
    cum = np.concatenate([np.zeros((len(rg), 1)), np.cumsum(e, axis=1, dtype=np.float64)], axis=1)
    tot_r = cum[:, -1:]
    ns = e.shape[1]

    def kept(q: np.ndarray) -> np.ndarray:
        x = np.clip(q, 0.0, 1.0) * ns
        i0 = np.minimum(np.floor(x).astype(np.int64), ns - 1)
        w = x - i0
        c = cum[:, i0] * (1.0 - w) + cum[:, i0 + 1] * w
        return np.where(tot_r > 0.0, c / np.where(tot_r > 0.0, tot_r, 1.0), 1.0)

    return kept


def _log_rank_interp(rg: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, w): rank j sits between grid ranks rg[lo] and rg[hi] at weight w, linearly
    in log rank; beyond the last grid rank (large layers: top LS_VECTOR_RANK vectors only)
    it takes the last grid rank's values."""
    pos = np.interp(np.log(j), np.log(rg.astype(np.float64)), np.arange(len(rg), dtype=np.float64))
    lo = np.floor(pos).astype(np.int64)
    return lo, np.minimum(lo + 1, len(rg) - 1), pos - lo


def _share_configs(layer: LayerSpec, st: Structure, share: float, kept: Callable[..., np.ndarray],
                   j: np.ndarray, interp: tuple[np.ndarray, np.ndarray, np.ndarray],
                   tail: tuple[np.ndarray, float], rank_err: np.ndarray) -> tuple[np.ndarray, ...]:
    """Configurations of every rank j whose S takes ``share`` of the size (rank j's L
    plus S); tail: ((len(j),) energy of R_j, energy of A); rank_err: rank-only error at j."""
    m, n = layer.m, layer.n
    mn = m * n
    lo, hi, wt = interp
    if st.kind == "nm":
        nz = np.full_like(j, mn * st.n // st.m)
        fr = kept()
        frac = (1.0 - wt) * fr[lo] + wt * fr[hi]
    else:
        ng, gsz = st.num_groups(m, n), st.group_size(m, n)
        d = share / (1.0 - share) * j * (m + n) / mn
        nz = np.clip(np.floor(d * mn / gsz + 0.5), 0, ng).astype(np.int64) * gsz
        fr = kept(nz / gsz / ng)  # (grid, ranks)
        idx = np.arange(len(j))
        frac = (1.0 - wt) * fr[lo, idx] + wt * fr[hi, idx]
    # one alternating step: S keeps the top groups of the rank-j residual, whose kept
    # fraction is measured at the grid ranks and interpolated (log rank) in between
    err = np.sqrt(np.maximum(0.0, tail[0] * (1.0 - frac) / tail[1]))
    err = np.minimum(err, rank_err)  # never claim worse than rank-only at a larger size
    size = j * (m + n) + nz
    ok = (nz > 0) & (size < mn)
    return size[ok], err[ok], j[ok], np.ones(int(ok.sum()), np.int64), nz[ok], nz[ok] / mn


def build_curves(layer: LayerSpec, mode: str, structure: Structure, *, slice_candidates: Sequence[int] = (1,),
                 sparse_shares: Sequence[float] = (0.0, 0.1, 0.25, 0.5), cache: Optional[CurveCache] = None,
                 seed: int = 0) -> LayerCurves:
    """Frontier of a layer for ``mode`` ("rank_only" | "sparse_only" | "lowrank_sparse").

    slice_candidates: ALDS slice counts to try (kept if they divide in_channels).
    sparse_shares: fractions of the layer's budget given to S in "lowrank_sparse" mode
        (0 = pure low rank, which also uses the slice candidates; >0 uses slices=1).
    """
    return frontier(layer, candidate_configs(layer, mode, structure, slice_candidates=slice_candidates,
                                             sparse_shares=sparse_shares, cache=cache, seed=seed))


def candidate_configs(layer: LayerSpec, mode: str, structure: Structure, *, slice_candidates: Sequence[int] = (1,),
                      sparse_shares: Sequence[float] = (0.0, 0.1, 0.25, 0.5), cache: Optional[CurveCache] = None,
                      seed: int = 0) -> Configs:
    """Every candidate configuration of :func:`build_curves` before the frontier is taken
    (rank only, each L + S share, S alone; same arguments)."""
    cache = cache if cache is not None else CurveCache()
    with serial_linalg():
        return _candidate_configs(layer, mode, structure, slice_candidates, sparse_shares, cache, seed)


def _candidate_configs(layer: LayerSpec, mode: str, structure: Structure, slice_candidates: Sequence[int],
                       sparse_shares: Sequence[float], cache: CurveCache, seed: int) -> Configs:
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
            parts.append(_sparse_part(layer, structure, cache, seed))  # the joint choice includes S alone
    elif mode == "sparse_only":
        parts.append(_sparse_part(layer, structure, cache, seed))
    else:
        raise ValueError(f"mode must be 'lowrank_sparse', 'rank_only' or 'sparse_only', got {mode!r}")
    dtypes = (np.int64, np.float64, np.int64, np.int64, np.int64, np.float64)
    if not parts:
        return Configs(*(np.zeros(0, dt) for dt in dtypes))
    return Configs(*(np.concatenate([np.asarray(x, dtype=dt).reshape(-1) for x in col])
                     for col, dt in zip(zip(*parts), dtypes)))


def _sparse_part(layer: LayerSpec, structure: Structure, cache: CurveCache, seed: int):
    """The sparse-only configurations of a layer (cached)."""
    key = f"sparse:{structure.name}:{structure.block}:{seed}"
    return cache.get(layer, key, lambda: _sparse_configs(layer, structure, cache, seed))


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
