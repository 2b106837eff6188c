"""Output errors of a compressed layer against the original, on the calibration inputs."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ..calibrate import LayerStats, stats_error
from ..solve.activations import act_fn

__all__ = ["dense_error", "output_error"]


def output_error(stats: LayerStats, original: nn.Module, new: nn.Module) -> tuple[float, str]:
    """Relative post-activation output error of ``new`` against ``original``.

    With an input subsample X (n, s) (layers followed by a nonlinear activation):
    ``||act(W X + b) - act(y'(X))||_F / ||act(W X + b)||_F`` in float64, where W, b are
    the original layer's (BatchNorm-folded) weight and bias and y'(X) the new module's
    output on the same columns (the module's own forward for linear layers; its
    dense weight times the patch matrix for convs), BatchNorm-folded the same way.
    Without a subsample (layers fitted as linear) the exact error over all N
    calibration columns from the Gram matrix and mean (:func:`stats_error`).  A layer
    fitted to an error-corrected target (``stats.target_weight``) is measured against
    that target.

    Returns:
        (error, description of what it was measured on).
    """
    Wm = stats.reference_weight(original)  # an error-corrected fit is measured against its target
    b = None if original.bias is None else original.bias.detach()
    if isinstance(new, (nn.Linear, nn.Conv2d)):
        Wn = new.weight.detach().reshape(Wm.shape)
    else:
        Wn = new.to_dense_weight().detach().reshape(Wm.shape)
    bn = None if new.bias is None else new.bias.detach()
    forward = new if stats.kind == "linear" and not isinstance(new, nn.Linear) else None
    return _error(stats, Wm, b, Wn, bn, forward)


def dense_error(
    stats: LayerStats,
    W: torch.Tensor,
    b: Optional[torch.Tensor],
    W_new: torch.Tensor,
    b_new: Optional[torch.Tensor],
) -> float:
    """:func:`output_error` for dense (m, n) weights (original and approximation)."""
    return _error(stats, W, b, W_new, b_new, None)[0]


def _cpu(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.cpu()


#: columns of the input subsample evaluated at a time (bounds the (m, chunk) float64 work)
ERROR_CHUNK = 1024


def _new_output(X: torch.Tensor, Wn: torch.Tensor, bn: Optional[torch.Tensor],
                forward: Optional[nn.Module]) -> torch.Tensor:
    """(m, c) float64 pre-BatchNorm output of the new layer on the columns X (n, c)."""
    f64 = torch.float64
    if forward is not None:
        dev = next((p.device for p in forward.parameters()), torch.device("cpu"))
        dt = next((p.dtype for p in forward.parameters()), torch.float32)
        with torch.no_grad():
            return forward(X.T.to(device=dev, dtype=dt)).T.to("cpu", f64)
    y2 = Wn.cpu().to(f64) @ X.to(f64)
    if bn is not None:
        y2 = y2 + bn.cpu().to(f64)[:, None]
    return y2


def _error(
    stats: LayerStats,
    Wm: torch.Tensor,
    b: Optional[torch.Tensor],
    Wn: torch.Tensor,
    bn: Optional[torch.Tensor],
    forward: Optional[nn.Module],
) -> tuple[float, str]:
    if stats.sample is None:
        err = stats_error(stats, Wm.cpu(), _cpu(b), Wn.cpu(), _cpu(bn))
        return err, f"gram ({stats.count} columns)"
    f64 = torch.float64
    Wf, bf = stats.folded(Wm.cpu().to(f64), None if b is None else b.cpu().to(f64))
    info = stats.activation
    num = den = 0.0
    S = stats.sample.shape[1]
    for c0 in range(0, S, ERROR_CHUNK):  # column chunks: (m, chunk) work arrays, sums in float64
        Xc = stats.sample[:, c0:c0 + ERROR_CHUNK]
        y = Wf @ Xc.to(f64)
        if bf is not None:
            y = y + bf[:, None]
        y2 = _new_output(Xc, Wn, bn, forward)
        if stats.bn_scale is not None:
            y2 = stats.bn_scale.to(f64)[:, None] * y2 + stats.bn_shift.to(f64)[:, None]
        a = act_fn(y, info.name, info.negative_slope)
        a2 = act_fn(y2, info.name, info.negative_slope)
        den += float(a.square().sum())
        num += float((a - a2).square().sum())
    den, diff = math.sqrt(den), math.sqrt(num)
    return (diff / den if den > 0 else diff), f"subsample ({S} columns)"
