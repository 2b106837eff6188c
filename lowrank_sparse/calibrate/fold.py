"""BatchNorm folding: the one home of the affine map a BatchNorm applies after a layer.

A layer followed by an eval-mode BatchNorm (and then an activation) has the objective
``act(a * (W x + b) + c)`` with per-output-channel

    a = gamma / sqrt(running_var + eps),   c = beta - running_mean * a.

Two views of the folded layer, both computed here:

* the objective view (:func:`fold_affine` with the true ``a``): the weight
  ``diag(a) W`` and bias ``a * b + c`` whose output the activation sees; used to
  measure output errors (in :mod:`lowrank_sparse.calibrate.stats`);
* the solver view (:class:`FoldedProblem`, built from a layer's statistics in
  :mod:`lowrank_sparse.calibrate.stats`): the same with every exact zero of ``a``
  replaced by 1 (:func:`solver_scale`).  A channel with ``a = 0`` outputs the
  constant ``c`` whatever its weight row, so any row is as good; keeping W's row
  lets :func:`unfold_decomposition` divide by the scale to return to the layer's own
  weight.  The budget allocator and the per-layer solves both use this view, so
  they see the same weight.

A BatchNorm without running statistics cannot be folded (:func:`bn_foldable`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.nn as nn


__all__ = [
    "BN_MODULES", "FoldedProblem", "bn_affine", "bn_foldable", "fold_affine",
    "solver_scale", "unfold_decomposition",
]

#: BatchNorm kinds that can sit between a layer and its activation.
BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)


def bn_foldable(bn: nn.Module) -> Optional[str]:
    """None if ``bn`` can be folded (eval-mode running statistics exist), else the reason."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return f"BatchNorm '{type(bn).__name__}' has no running statistics: cannot fold it"
    return None


def bn_affine(bn: nn.Module, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c), each (m,) float64 on the CPU: the eval-mode affine map of ``bn``.

    Raises:
        ValueError: ``bn`` has a number of features other than ``m``.
    """
    var = bn.running_var.detach().to(torch.float64).cpu()
    mean = bn.running_mean.detach().to(torch.float64).cpu()
    a = 1.0 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach().to(torch.float64).cpu()
    c = -mean * a
    if bn.bias is not None:
        c = c + bn.bias.detach().to(torch.float64).cpu()
    if a.numel() != m:
        raise ValueError(f"BatchNorm has {a.numel()} features, the layer before it has {m} outputs")
    return a, c


def solver_scale(scale: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The per-row scale the solver folds in: ``scale`` with exact zeros replaced by 1
    (a new tensor; None stays None)."""
    if scale is None:
        return None
    a = scale.clone()
    a[a == 0] = 1.0
    return a


def fold_affine(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor],
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(diag(scale) W, scale * b + shift) in W's dtype and device.

    Args:
        weight: the layer's weight, any shape with out-channels first; used as (m, n).
        bias: (m,) or None (then the folded bias is ``shift``).
        scale, shift: (m,) BatchNorm affine; ``scale`` None means no BatchNorm (W and
            b are returned as they are, W as a matrix).
    """
    W = weight.detach().reshape(weight.shape[0], -1)
    b = None if bias is None else bias.detach()
    if scale is None:
        return W, b
    a = scale.to(W)
    c = shift.to(W)
    return W * a[:, None], (c if b is None else a * b + c)


@dataclass
class FoldedProblem:
    """What the solver fits for one layer.

    Attributes:
        weight: (m, n) weight with the solver's BatchNorm scale folded in.
        bias: (m,) folded bias, or None (no bias and no BatchNorm).
        scale: (m,) float64 scale that was folded in (zeros replaced by 1), or None.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    scale: Optional[torch.Tensor]


def unfold_decomposition(dec: Any, scale: Optional[torch.Tensor]) -> Any:
    """Undo the row scaling of the solver view: the solver fitted diag(a) W, the
    layer stores W, so U and S are divided by ``scale`` row by row (None: unchanged)."""
    if scale is None:
        return dec
    inv = 1.0 / scale
    return replace(dec, U=dec.U * inv.to(dec.U)[:, None], S=dec.S * inv.to(dec.S)[:, None])
