"""Sparse-part probes for the error curves of :mod:`.curves`: group energies of a
residual for every structure, the kept fraction of the top-k groups (N:M included),
and the seeded column sample that large layers use instead of all entries.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..structure import Structure
from .spec import LayerSpec

#: Entries sampled from layers larger than this when estimating sparse errors.
SAMPLE_ENTRIES = 1 << 18


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
