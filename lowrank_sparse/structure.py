"""Structured-sparsity patterns for the sparse part S of a weight matrix.

A weight is handled as a matrix W of shape (m, n): (out_features, in_features) for
nn.Linear and (out_channels, in_channels * kh * kw) for nn.Conv2d.  A structure
names which groups of entries S keeps or drops together:

===============  ===========================================  ==================
name             groups                                       entries per group
===============  ===========================================  ==================
"unstructured"   single entries                               1
"row"            whole rows (output channels)                 n
"column"         whole columns (input features / taps)        m
"channel"        whole input channels: columns [j*b, (j+1)*b) m * b, b = kh*kw
"N:M", e.g 2:4   in each row, N of every M consecutive cols   (pattern, no groups)
===============  ===========================================  ==================

``density`` is the fraction of W's entries S may keep nonzero; for group
structures it is rounded to whole groups (:meth:`Structure.budget`).  For N:M the
density is fixed at N/M.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["unstructured", "row", "column", "channel", "nm"]

#: The kinds, named as the members of the C++ core's _core.StructureKind.
KINDS: tuple[str, ...] = ("unstructured", "row", "column", "channel", "nm")

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Structure:
    """A parsed sparsity structure.

    Attributes:
        kind: one of "unstructured", "row", "column", "channel", "nm".
        block: columns per input channel (kh*kw) for "channel"; 1 otherwise.
        n, m: for "nm", keep ``n`` of every ``m`` consecutive entries of a row.
    """

    kind: Kind = "unstructured"
    block: int = 1
    n: int = 0
    m: int = 0

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind

    def check_shape(self, rows: int, cols: int) -> None:
        """Raise ValueError if this structure cannot be applied to a (rows, cols) matrix."""
        if self.kind == "channel" and cols % self.block != 0:
            raise ValueError(
                f"structure 'channel' needs the column count ({cols}) to be a multiple of "
                f"the kernel size kh*kw={self.block}"
            )
        if self.kind == "nm" and cols % self.m != 0:
            raise ValueError(
                f"structure '{self.n}:{self.m}' needs the input dimension ({cols}) to be "
                f"divisible by M={self.m}"
            )

    def num_groups(self, rows: int, cols: int) -> int:
        """Number of groups in a (rows, cols) matrix (entries for unstructured / N:M)."""
        if self.kind == "row":
            return rows
        if self.kind == "column":
            return cols
        if self.kind == "channel":
            return cols // self.block
        return rows * cols

    def group_size(self, rows: int, cols: int) -> int:
        """Entries per group."""
        if self.kind == "row":
            return cols
        if self.kind == "column":
            return rows
        if self.kind == "channel":
            return rows * self.block
        return 1

    def budget(self, density: float, rows: int, cols: int) -> int:
        """Number of groups (entries when ungrouped) S may keep at ``density``.

        Rounded to the nearest whole group; for N:M it is the pattern's fixed count at
        any density > 0, and 0 (no S) at density 0.
        """
        if self.kind == "nm":
            return rows * cols * self.n // self.m if density > 0 else 0
        total = rows * cols
        g = self.group_size(rows, cols)
        k = int(math.floor(density * total / g + 0.5))
        return max(0, min(k, self.num_groups(rows, cols)))


def parse_structure(spec: str | Structure, *, block: int = 1) -> Structure:
    """Parse a structure name ("unstructured", "row", "column", "channel", "N:M").

    Args:
        spec: the name, or an already parsed Structure (returned as is, with ``block``
            filled in for "channel" if it was left at 1).
        block: kh*kw of a conv kernel, used by "channel"; 1 for linear layers.

    Raises:
        ValueError: unknown name, or an N:M with N < 1, M < 2 or N >= M.
        TypeError: spec is neither a str nor a Structure.
    """
    if isinstance(spec, Structure):
        if spec.kind == "channel" and spec.block == 1 and block != 1:
            return Structure("channel", block=block)
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"structure must be a str such as 'row' or '2:4', got {type(spec).__name__}")
    if block < 1:
        raise ValueError(f"block (kh*kw) must be >= 1, got {block}")
    s = spec.strip().lower()
    if s in ("unstructured", "row", "column"):
        return Structure(s)  # type: ignore[arg-type]
    if s == "channel":
        return Structure("channel", block=block)
    mt = _NM_RE.match(s)
    if mt:
        n, m = int(mt.group(1)), int(mt.group(2))
        if not (1 <= n < m):
            raise ValueError(f"N:M structure needs 1 <= N < M, got '{spec}'")
        return Structure("nm", n=n, m=m)
    raise ValueError(
        f"unknown structure {spec!r}; expected 'unstructured', 'row', 'column', 'channel' or 'N:M' (e.g. '2:4')"
    )
