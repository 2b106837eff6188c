"""The objective of a gated MLP's gate and up projections (Llama, Mistral, Qwen, ...).

A gated MLP computes ``down(h)`` with ``h = a(g) * u``, ``g = G x`` (gate_proj) and
``u = U x`` (up_proj).  What matters downstream of G and U is ``h``, so each is fitted
on the error it causes in ``h`` with the other branch left as it is (derivation in
``docs/method.md``, "Gated MLPs"):

* up, ``U -> U + D``:   ``dh_it = a(g_it) (D x_t)_i``, exactly, so
  ``||dh||^2 = sum_it w_it (D x_t)_i^2`` with ``w_it = a(g_it)^2``;
* gate, ``G -> G + D``: ``dh_it = a'(g_it) u_it (D x_t)_i`` to first order, so the same
  form with ``w_it = (a'(g_it) u_it)^2``.

Exactly, each output row i would need its own weighted Gram ``X diag(w_i) X^T``
(m Gram matrices).  The weights are approximated by a separable (rank-one) form
``w_it ~ c_i r_t / wbar`` with the row means ``c_i = mean_t w_it``, the token means
``r_t = mean_i w_it`` and the overall mean ``wbar`` (exact when ``w`` is rank one).
Then ``||dh||^2 ~ sum_i c_i d_i^T H_r d_i`` with the token-weighted Gram
``H_r = sum_t r_t x_t x_t^T``: the linear (identity) objective of the row-scaled weight
``diag(sqrt(c)) W`` under ``H_r``.  :func:`apply_gated` writes it into the layer's
statistics as a row scale (the same folding a BatchNorm gets,
:mod:`~lowrank_sparse.calibrate.fold`) and a weighted Gram / mean, so the allocator,
the solves and the reported errors all see this objective; the solution is unscaled
row by row, which keeps its rank and its sparsity pattern for every structure.

``down_proj`` takes ``h`` as its input: it is fitted as linear on its own input Gram,
which is exact for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn

from ..solve.activations import act_and_slope
from .activation import ActivationInfo, activation_of_module

__all__ = ["GATED_MLP_CHILDREN", "GatedAccumulator", "GatedBlock", "apply_gated", "gated_blocks", "gated_weights"]

#: Children of a gated MLP block: down_proj(act_fn(gate_proj(x)) * up_proj(x)).
GATED_MLP_CHILDREN = ("gate_proj", "up_proj", "down_proj")

#: Floor of the row scale sqrt(c_i / mean c) (keeps the unscaling well conditioned).
ROW_SCALE_FLOOR = 1e-4


@dataclass(frozen=True)
class GatedBlock:
    """One gated MLP block.

    Attributes:
        name: the block's qualified name.
        gate, up, down: qualified names of its three linears.
        activation: the activation of ``act_fn`` (name and leaky ReLU slope), or None
            when it is not one the library knows (the block is then fitted as linear).
    """

    name: str
    gate: str
    up: str
    down: str
    activation: Optional[ActivationInfo]


def gated_blocks(model: nn.Module) -> list[GatedBlock]:
    """Every module of ``model`` with children ``gate_proj``, ``up_proj`` and
    ``down_proj``, with the activation of its ``act_fn`` child / attribute."""
    out = []
    for name, mod in model.named_modules():
        children = dict(mod.named_children())
        if not all(c in children for c in GATED_MLP_CHILDREN):
            continue
        act = getattr(mod, "act_fn", None)
        info = activation_of_module(act) if isinstance(act, nn.Module) else None
        gate, up, down = (f"{name}.{c}" if name else c for c in GATED_MLP_CHILDREN)
        out.append(GatedBlock(name, gate, up, down, info))
    return out


def gated_weights(g: torch.Tensor, u: torch.Tensor, info: ActivationInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-row weights of the gate's and the up projection's errors in ``h``.

    Args:
        g, u: (N, m) outputs of gate_proj and up_proj for N tokens.
        info: the block's activation.

    Returns:
        (w_gate, w_up), each (N, m) float64: ``(a'(g) u)^2`` and ``a(g)^2``.
    """
    g64, u64 = g.detach().to(torch.float64), u.detach().to(torch.float64)
    a, da = act_and_slope(g64, info.name, info.negative_slope)
    return (da * u64).square(), a.square()


class GatedAccumulator:
    """Streaming sums of one gated layer's objective: ``sum_t w_it`` per row, and the
    token-weighted ``sum_t r_t x_t x_t^T``, ``sum_t r_t x_t``, ``sum_t r_t``."""

    def __init__(self) -> None:
        self.row_sum: Optional[torch.Tensor] = None
        self.gram: Optional[torch.Tensor] = None
        self.xsum: Optional[torch.Tensor] = None
        self.rsum = 0.0
        self.count = 0

    def add(self, x: torch.Tensor, w: torch.Tensor) -> None:
        """``x`` (N, n) layer inputs, ``w`` (N, m) their weights (:func:`gated_weights`)."""
        x64 = x.detach().to(torch.float64)
        r = w.mean(dim=1)
        rows = w.sum(dim=0)
        g = (x64 * r[:, None]).T @ x64
        xs = r @ x64
        self.row_sum = rows if self.row_sum is None else self.row_sum.add_(rows)
        self.gram = g if self.gram is None else self.gram.add_(g)
        self.xsum = xs if self.xsum is None else self.xsum.add_(xs)
        self.rsum += float(r.sum())
        self.count += int(x.shape[0])

    def finish(self) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(row scale (m,), weighted Gram (n, n), weighted mean (n,)), float64 on the
        CPU; None when nothing was added or every weight is zero."""
        if self.row_sum is None or self.rsum <= 0.0:
            return None
        c = self.row_sum / max(self.count, 1)
        scale = (c / c.mean()).sqrt()
        scale = scale.clamp_min(ROW_SCALE_FLOOR * float(scale.max()))
        return scale.cpu(), (self.gram / self.rsum).cpu(), (self.xsum / self.rsum).cpu()


def apply_gated(stats, result: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], role: str,
                activation: str):
    """``stats`` (a :class:`~lowrank_sparse.calibrate.LayerStats`) with the gated
    objective of :class:`GatedAccumulator.finish` folded in: the row scale as the
    folded affine (no shift), the weighted Gram and mean.  ``result`` None leaves the
    layer's linear objective (note says why)."""
    if result is None:
        note = f"gated MLP {role}: its weights in act(gate) * up are all zero; fitted as linear on its input Gram"
        return replace(stats, activation=replace(stats.activation, note=note))
    scale, gram, mean = result
    note = (f"gated MLP {role} ({activation}): fitted on its error in act(gate x) * (up x) "
            f"(row- and token-weighted Gram)")
    return replace(stats, gram=gram, mean=mean, bn_scale=scale, bn_shift=torch.zeros_like(scale),
                   activation=replace(stats.activation, note=note))
