"""End-to-end sensitivity of each layer: how much of a layer's relative output error
reaches the model's output.

The allocators compare layers by their own relative output error.  A transformer's
layers do not pass their errors on alike: an FFN down-projection writes straight into
the residual stream, a key projection's error is damped by the softmax.  With
``Budget(..., weighting="sensitivity")`` compress() measures, for every selected layer k,

    s_k = ||y_k - y||_F / (eps ||y||_F),

where y is the model's output on the first calibration batches and y_k the output when
layer k's output o_k gets seeded Gaussian noise of relative size eps
(``o_k + eps * rms(o_k) * N(0, 1)``), one layer at a time; s_k is then divided by the
mean over the layers.  The allocator multiplies layer k's predicted errors by s_k when
it compares layers (the split inside a layer is unchanged), so the budget moves to the
layers whose errors travel furthest.  The model output is the first tensor the forward
returns (a ``transformers`` output's ``last_hidden_state`` / ``logits``), with the
padding positions of an ``attention_mask`` left out.  Cost: one forward of the first
``max_batches`` batches per layer.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ..calibrate.batches import CalibrationData, ModelBatch, iter_model_batches

__all__ = ["DEFAULT_EPS", "layer_sensitivities", "output_tensor"]

#: Relative size of the probing noise.
DEFAULT_EPS = 0.05


def output_tensor(out: Any) -> torch.Tensor:
    """The first tensor of a forward's output: itself, the first tensor value of a
    mapping (a ``transformers`` ModelOutput), or the first tensor of a tuple / list.

    Raises:
        TypeError: the output holds no tensor.
    """
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if hasattr(out, "values") else out if isinstance(out, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"the model's output holds no tensor ({type(out).__name__})")


def _energy(y: torch.Tensor, batch: ModelBatch) -> torch.Tensor:
    """(y^2 summed over the real positions), float64."""
    y = y.detach().to(torch.float64)
    m = batch.mask
    if m is not None and y.dim() >= 2 and tuple(y.shape[:2]) == tuple(m.shape):
        y = y[m.to(y.device).bool()]
    return y.square().sum()


def layer_sensitivities(model: nn.Module, data: CalibrationData, names: list[str], *, batch_size: int = 128,
                        max_batches: int = 2, eps: float = DEFAULT_EPS, seed: int = 0) -> dict[str, float]:
    """{name: s_k} for the layers ``names`` of ``model`` (see the module doc), mean 1.

    The model runs in eval mode under ``no_grad``; its training flags are restored and
    its parameters are never touched.

    Raises:
        ValueError: a name that is not a module of ``model``, ``eps`` not in (0, 1],
            ``max_batches < 1``, or no calibration batch; a model whose output does not
            change under any probe (every s_k = 0).
    """
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ValueError(f"layer_sensitivities: not modules of the model: {missing}")
    if not 0.0 < eps <= 1.0 or max_batches < 1:
        raise ValueError(f"layer_sensitivities: need 0 < eps <= 1 and max_batches >= 1, got {eps}, {max_batches}")
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = []
    for b, batch in enumerate(iter_model_batches(data, model, batch_size)):
        if b >= max_batches:
            break
        batches.append(batch.to(dev))
    if not batches:
        raise ValueError("layer_sensitivities: the calibration data has no batch")
    flags = {n: m.training for n, m in model.named_modules()}
    model.eval()
    try:
        with torch.no_grad():
            base = [output_tensor(b(model)) for b in batches]
            norm = sum(float(_energy(y, b)) for y, b in zip(base, batches, strict=True)) ** 0.5
            raw = {n: _probe(model, mods[n], batches, base, eps, seed + i) / max(norm, 1e-300) / eps
                   for i, n in enumerate(names)}
    finally:
        for n, m in model.named_modules():
            m.train(flags.get(n, m.training))
    mean = sum(raw.values()) / max(len(raw), 1)
    if not mean > 0:
        raise ValueError("layer_sensitivities: the model's output does not change when any layer's output does")
    return {n: max(v / mean, 1e-6) for n, v in raw.items()}


def _probe(model: nn.Module, mod: nn.Module, batches: list[ModelBatch], base: list[torch.Tensor], eps: float,
           seed: int) -> float:
    """||y_k - y|| over the batches with noise on ``mod``'s output."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def noisy(m: nn.Module, inp: Any, out: Optional[torch.Tensor]) -> Any:
        if not isinstance(out, torch.Tensor):
            return None
        rms = out.detach().to(torch.float64).square().mean().sqrt().item()
        noise = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.device, out.dtype)
        return out + eps * rms * noise

    h = mod.register_forward_hook(noisy)
    try:
        diff = sum(float(_energy(output_tensor(b(model)) - y, b)) for b, y in zip(batches, base, strict=True))
    finally:
        h.remove()
    return diff ** 0.5
