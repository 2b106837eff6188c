"""Argument checks shared by the operators (:mod:`.prox`, :mod:`.svd`): what a user can
get wrong is a TypeError / ValueError naming the argument, before any work."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validate import check_magnitude as _check_magnitude
from ..structure import Structure, parse_structure
from ._boundary import Array

_FLOATS_NP = (np.dtype(np.float32), np.dtype(np.float64))
_FLOATS_T = (torch.float32, torch.float64)


def use_torch(x: Array) -> bool:
    """Whether x runs the pure-torch versions (a tensor not on the CPU)."""
    return isinstance(x, torch.Tensor) and x.device.type != "cpu"


def check_type(x: Array, name: str) -> None:
    """x must be a float32/float64 numpy array or torch tensor (TypeError)."""
    if isinstance(x, torch.Tensor):
        if x.dtype not in _FLOATS_T:
            raise TypeError(f"{name} must be a float32 or float64 tensor, got {x.dtype}")
    elif isinstance(x, np.ndarray):
        if x.dtype not in _FLOATS_NP:
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {x.dtype}")
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def check_finite(x: Array, name: str, always: bool = False) -> None:
    """No NaN or Inf in x (ValueError).  The C++ core checks finiteness itself (same
    message, no temporary), but names its own parameter: only the torch (CUDA) path,
    and (``always``) arguments whose core name differs, need the check here."""
    if not (always or use_torch(x)):
        return
    ok = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf")


def check_2d(x: Array, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (m, n), got shape {tuple(x.shape)}")


def check_magnitude(x: Array, name: str) -> None:
    """Finite entries too large for sums of their squares (ValueError naming x; see
    lowrank_sparse._validate.check_magnitude)."""
    _check_magnitude(x, name, torch.float64 if x.dtype in (np.float64, torch.float64) else torch.float32)


def check_tau(tau: float) -> float:
    """tau as a float, finite and >= 0 (TypeError for a non-number, ValueError)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)):
        if not (isinstance(tau, (np.ndarray, torch.Tensor)) and tau.ndim == 0):
            raise TypeError(f"tau must be a number, got {type(tau).__name__}")
    t = float(tau)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    return t


def check_k(k: int, limit: int, what: str) -> int:
    """k as an int in [0, limit] (TypeError / ValueError; ``what`` names the limit)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 0 <= k <= limit:
        raise ValueError(f"k must satisfy 0 <= k <= {limit} ({what}), got {k}")
    return k


def check_int(v: int, name: str) -> int:
    """v as an int (TypeError for bools, floats, ...)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def structure_for(structure: str | Structure, block: int, x: Array) -> Structure:
    """The parsed structure, checked against x (m, n)."""
    s = parse_structure(structure, block=block)
    check_2d(x, "x")
    s.check_shape(int(x.shape[0]), int(x.shape[1]))
    return s
