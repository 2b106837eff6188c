"""The crossing into the C++ core (``lowrank_sparse._core``): the module itself, numpy
views of the arguments and the core's typed Structure."""

from __future__ import annotations

from types import ModuleType
from typing import Union

import numpy as np
import torch

from ..structure import Structure

Array = Union[np.ndarray, torch.Tensor]


def core() -> ModuleType:
    """lowrank_sparse._core, imported on first use (the pure-Python parts work without a build)."""
    from .. import _core

    return _core


def to_np(x: Array) -> np.ndarray:
    """C-contiguous numpy view of a CPU tensor / array (copies only if not contiguous)."""
    if isinstance(x, torch.Tensor):
        return x.detach().contiguous().numpy()
    return np.ascontiguousarray(x)


def back(out: np.ndarray, like: Array) -> Array:
    """``out`` as the kind of ``like``: a tensor sharing its memory, or the array itself."""
    return torch.from_numpy(out) if isinstance(like, torch.Tensor) else out


def core_structure(s: Structure):  # -> lowrank_sparse._core.Structure
    """The core's Structure for a parsed one (the kind by name, no integer codes)."""
    c = core()
    return c.Structure(kind=getattr(c.StructureKind, s.kind), block=s.block,
                       nm_n=s.n if s.kind == "nm" else 2, nm_m=s.m if s.kind == "nm" else 4)
