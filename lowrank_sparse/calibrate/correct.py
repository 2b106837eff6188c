"""Error-corrected targets: fit a layer to the dense model's output on its new input.

Under sequential calibration layer k sees the input ``x_hat`` produced by the already
compressed layers before it, while the dense model gave it ``x``.  Fitting the new
weight ``W_new`` to the layer's own output on ``x_hat`` (``min E||W x_hat - W_new x_hat||^2``)
lets the upstream error pass through untouched.  Fitting it to the dense output instead,

    min_{W_new}  E || W x - W_new x_hat ||^2,

corrects it as far as a linear map of ``x_hat`` can.  With ``G = E[x_hat x_hat^T]`` and
``C = E[x x_hat^T]`` (both (n, n)), the objective equals

    E || (W' - W_new) x_hat ||^2 + const,   W' = W C G^{-1} = W + W (C - G) G^{-1},

so the usual Gram-mode problem with the target weight ``W'`` in place of ``W`` solves it
exactly (the constant is the part of ``W x`` no linear map of ``x_hat`` reaches).  The
second form is used with a damped inverse, ``(G + damp * mean(diag G) I)^{-1}``: when
``x_hat == x`` it gives ``W' = W`` exactly, whatever the damping.  For a layer followed
by a nonlinearity the solver fits ``act(W' x_hat + b)``, a first-order stand-in for the
dense ``act(W x + b)``.  The bias is left as it is.

:func:`cross_moment` streams ``C`` over the calibration batches (running the dense and
the compressed model on each batch, hooking the layer's input in both);
:func:`corrected_target` forms ``W'``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .batches import CalibrationData, iter_model_batches
from .capture import layer_input_matrix, token_rows
from .config import CalibrationConfig

__all__ = ["DEFAULT_DAMP", "corrected_target", "cross_moment"]

#: Damping of G's inverse, as a fraction of its mean diagonal (SparseGPT's default 1 %).
DEFAULT_DAMP = 0.01


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class _Inputs:
    """Forward hook that keeps one layer's inputs (padding rows dropped) for one batch."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.mask, self.seen = module, None, []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        x = inp[0].detach()
        if not isinstance(mod, nn.Conv2d):
            x = token_rows(x, self.mask)
        self.seen.append(x)

    def take(self) -> list[torch.Tensor]:
        seen, self.seen = self.seen, []
        return seen


def _accumulate(C: Optional[torch.Tensor], module: nn.Module, x: torch.Tensor, xh: torch.Tensor,
                chunk_rows: int) -> tuple[torch.Tensor, int]:
    """(C + rows(x)^T rows(x_hat), rows added), a conv's images a few at a time."""
    step, rows = max(1, x.shape[0]), 0
    if isinstance(module, nn.Conv2d) and x.dim() == 4:
        step = max(1, chunk_rows // max(1, x.shape[-2] * x.shape[-1]))
    for i in range(0, x.shape[0], step):
        r = layer_input_matrix(module, x[i:i + step]).to(torch.float64)
        rh = layer_input_matrix(module, xh[i:i + step]).to(torch.float64)
        C = r.T @ rh if C is None else C.add_(r.T @ rh)
        rows += r.shape[0]
    return C, rows


def cross_moment(dense: nn.Module, model: nn.Module, data: CalibrationData, name: str,
                 config: CalibrationConfig) -> torch.Tensor:
    """``C = E[x x_hat^T]`` (n, n) float64 of layer ``name``: x its input in ``dense``,
    x_hat in ``model``, on the same calibration batches (``config``'s batch size and
    ``max_batches``), padding positions left out as in the statistics.

    Both models run in eval mode under ``no_grad``; their training flags are restored
    and their parameters are never touched.

    Raises:
        ValueError: the layer is missing from either model, its inputs in the two
            models differ in shape (the models are not the same architecture), or it
            never ran.
    """
    mods = []
    for m in (dense, model):
        found = dict(m.named_modules()).get(name)
        if found is None or not hasattr(found, "weight"):
            raise ValueError(f"cross_moment: layer '{name}' is not a weight layer of both models")
        mods.append(found)
    hooks = [_Inputs(mods[0]), _Inputs(mods[1])]
    flags = [{n: m.training for n, m in net.named_modules()} for net in (dense, model)]
    C, count = None, 0
    try:
        dense.eval()
        model.eval()
        with torch.no_grad():
            for b, batch in enumerate(iter_model_batches(data, model, config.batch_size)):
                if config.max_batches is not None and b >= config.max_batches:
                    break
                for net, h in zip((dense, model), hooks, strict=True):
                    h.mask = batch.mask
                    batch.to(_device(net))(net)
                for x, xh in zip(hooks[0].take(), hooks[1].take(), strict=True):
                    if x.shape != xh.shape:
                        raise ValueError(f"cross_moment: layer '{name}' got inputs of shape {tuple(x.shape)} in "
                                         f"the dense model and {tuple(xh.shape)} in the compressed one")
                    C, rows = _accumulate(C, mods[1], x.to(xh.device), xh, config.chunk_rows)
                    count += rows
    finally:
        for h in hooks:
            h.handle.remove()
        for net, flag in zip((dense, model), flags, strict=True):
            for n, m in net.named_modules():
                m.train(flag.get(n, m.training))
    if C is None or count == 0:
        raise ValueError(f"cross_moment: layer '{name}' never ran on the calibration data")
    return C.div_(count).cpu()


def corrected_target(weight: torch.Tensor, cross: torch.Tensor, gram: torch.Tensor,
                     damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """``W' = W + W (C - G) (G + damp * mean(diag G) I)^{-1}``, in ``weight``'s dtype.

    Args:
        weight: (m, n) the layer's weight as a matrix.
        cross: (n, n) ``E[x x_hat^T]`` (:func:`cross_moment`).
        gram: (n, n) ``E[x_hat x_hat^T]``, the layer's Gram on its new input.
        damp: damping, as a fraction of G's mean diagonal; > 0.

    Raises:
        ValueError: shapes that do not agree, a damping that is not > 0 and finite.
    """
    m, n = weight.shape
    if tuple(cross.shape) != (n, n) or tuple(gram.shape) != (n, n):
        raise ValueError(f"corrected_target: weight is {m}x{n}, cross {tuple(cross.shape)}, gram {tuple(gram.shape)}")
    if not (damp > 0 and damp < float("inf")):
        raise ValueError(f"corrected_target: damp must be finite and > 0, got {damp}")
    f64 = torch.float64
    G = gram.to(f64)
    lam = damp * float(G.diagonal().mean().clamp_min(1e-30))
    H = G + lam * torch.eye(n, dtype=f64)
    W = weight.detach().to("cpu", f64)
    D = W @ (cross.to(f64) - G)  # (m, n)
    L = torch.linalg.cholesky(H)
    step = torch.cholesky_solve(D.T.contiguous(), L).T  # D H^{-1}, H symmetric
    return (W + step).to(device=weight.device, dtype=weight.dtype)
