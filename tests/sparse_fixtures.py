"""Shared test helper: random decompositions whose sparse part follows a given structure.

(Used by the io tests, and the sparse-format tests for :func:`masked`.)
"""

from __future__ import annotations

import torch

from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure

#: fraction of rows / channels / entries kept per structure when ``density`` is not given
DEFAULT_DENSITY = {"row": 0.2, "channel": 0.3, "unstructured": 0.1}


def random_decomposition(
    m: int,
    n: int,
    r: int,
    kind: str,
    g: torch.Generator,
    *,
    block: int = 1,
    slices: int = 1,
    density: float | None = None,
) -> Decomposition:
    """Random factors U (m, r*slices), V (r*slices, n) block-diagonal with ``slices``
    blocks, and an S (m, n) of random values on a random support of structure ``kind``:
    "row" (whole rows), "channel" (whole groups of ``block`` columns), "2:4", or
    "unstructured".  ``density``: probability of keeping a row / channel / entry
    (default :data:`DEFAULT_DENSITY`; ignored for 2:4)."""
    if n % slices:
        raise ValueError(f"n ({n}) must be a multiple of slices ({slices})")
    U = torch.randn(m, r * slices, generator=g)
    V = torch.block_diag(*[torch.randn(r, n // slices, generator=g) for _ in range(slices)])
    W = torch.randn(m, n, generator=g)
    p = DEFAULT_DENSITY.get(kind, 0.0) if density is None else density
    if kind == "row":
        mask = (torch.rand(m, 1, generator=g) < p).expand(m, n)
    elif kind == "channel":
        mask = (torch.rand(1, n // block, 1, generator=g) < p).expand(m, n // block, block).reshape(m, n)
    elif kind == "2:4":
        idx = torch.rand(m, n // 4, 4, generator=g).argsort(dim=2)[..., :2]
        mask = torch.zeros(m, n // 4, 4, dtype=torch.bool).scatter(2, idx, True).reshape(m, n)
    elif kind == "unstructured":
        mask = torch.rand(m, n, generator=g) < p
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return Decomposition(U, V, W * mask, parse_structure(kind, block=block), SolveInfo(), slices=slices)


KINDS = ["unstructured", "row", "column", "channel", "2:4", "1:8", "1:16"]


def masked(kind: str, m: int, n: int, g: torch.Generator, block: int = 1) -> torch.Tensor:
    """Random S (m, n) whose support follows ``kind`` (about 30% density, nonzero values)."""
    vals = torch.randn(m, n, generator=g).abs().add(0.1) * torch.sign(torch.randn(m, n, generator=g))
    if kind == "unstructured":
        mask = torch.rand(m, n, generator=g) < 0.3
    elif kind == "row":
        mask = (torch.rand(m, 1, generator=g) < 0.3).expand(m, n)
    elif kind == "column":
        mask = (torch.rand(1, n, generator=g) < 0.3).expand(m, n)
    elif kind == "channel":
        mask = (torch.rand(1, n // block, 1, generator=g) < 0.4).expand(m, n // block, block).reshape(m, n)
    else:
        N, M = map(int, kind.split(":"))
        idx = torch.rand(m, n // M, M, generator=g).argsort(dim=2)[..., :N]
        mask = torch.zeros(m, n // M, M, dtype=torch.bool).scatter(2, idx, True).reshape(m, n)
    return vals * mask
