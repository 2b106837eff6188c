"""Exact parameter and multiply-accumulate (MAC) counts.

The library's one definition: **MACs per input sample**, one MAC being one multiply
and one add (FLOPs = 2 x MACs), of the products of a layer's weight with its input,
for the layers that carry the weights being compressed:

* ``nn.Linear`` (and ``transformers``' Conv1D, GPT-2's linear layer with an (in, out)
  weight): in*out per input vector (times the vectors per sample, e.g. tokens);
* ``nn.Conv2d``: H_out*W_out * out * (in/groups) * kh*kw;
* ``LowRankSparseLinear`` / ``LowRankSparseConv2d``: per input vector / output pixel
  ``j*n + m*g*j + nnz(S)`` (rank j per slice, g slices; ``rank*(m+n) + nnz(S)`` for
  plain low rank), times H_out*W_out for the conv (:func:`module_macs`).

Not counted by :func:`model_macs`: bias additions, activations, normalisation, pooling,
residual additions, softmax, and products of two activations such as attention's
Q K^T and A V (no weight takes part; the same before and after compression).
A hook-based counter such as torch-pruning's ``count_ops_and_params`` reports the same
conv/linear weight MACs, plus one op per output element for a conv's bias (once per
output feature for a linear's) and elementwise ops for BN, ReLU and pooling (see
tests/test_counts_reference.py).  :func:`model_params` counts every parameter of
the model once (the pair modules store exactly their counted values).

``dense_flops`` and ``model_flops`` are deprecated aliases of :func:`dense_macs` and
:func:`model_macs` (the same MAC counts).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._renamed import renamed_function
from .conv import LowRankSparseConv2d
from .conv1d import is_conv1d
from .geometry import conv_output_hw
from .linear import LowRankSparseLinear
from .sparse import CompactSparse

__all__ = ["dense_params", "dense_macs", "module_macs", "model_params", "model_macs", "dense_flops", "model_flops"]


def dense_params(module: nn.Module) -> int:
    """Parameters of an nn.Linear / nn.Conv2d / ``transformers`` Conv1D: weight + bias
    entries (groups respected, as the weight already has in/groups input channels)."""
    if not (isinstance(module, (nn.Linear, nn.Conv2d)) or is_conv1d(module)):
        raise TypeError(f"dense_params expects nn.Linear, nn.Conv2d or Conv1D, got {type(module).__name__}")
    return int(module.weight.numel()) + (0 if module.bias is None else int(module.bias.numel()))


def dense_macs(module: nn.Module, input_hw: tuple[int, int] | None = None) -> int:
    """MACs per input vector (Linear) / per sample (Conv2d on an (H, W) input).

    Linear (and a ``transformers`` Conv1D, weight (in, out)): in*out.
    Conv2d: H_out*W_out * out * (in/groups) * kh*kw.

    Raises:
        ValueError: a Conv2d without ``input_hw``.
        TypeError: another module type.
    """
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    if is_conv1d(module):
        return int(module.weight.shape[0]) * int(module.weight.shape[1])
    if isinstance(module, nn.Conv2d):
        if input_hw is None:
            raise ValueError("dense_macs of a Conv2d needs input_hw=(H, W)")
        Ho, Wo = conv_output_hw(input_hw, module.kernel_size, module.stride, module.padding, module.dilation)
        kh, kw = module.kernel_size
        return Ho * Wo * module.out_channels * (module.in_channels // module.groups) * kh * kw
    raise TypeError(f"dense_macs expects nn.Linear, nn.Conv2d or Conv1D, got {type(module).__name__}")


def module_macs(module: nn.Module, input_hw: tuple[int, int] | None = None) -> int:
    """MACs of one nn.Linear / nn.Conv2d / pair module: per input vector (linear) or per
    sample on an (H, W) input (conv).  A pair module costs ``macs_per_position()`` per
    input vector / output pixel.

    Raises:
        ValueError: a conv without ``input_hw``.
        TypeError: another module type.
    """
    if isinstance(module, LowRankSparseLinear):
        return module.macs_per_position()
    if isinstance(module, LowRankSparseConv2d):
        if input_hw is None:
            raise ValueError("module_macs of a LowRankSparseConv2d needs input_hw=(H, W)")
        Ho, Wo = module.output_hw(input_hw)
        return Ho * Wo * module.macs_per_position()
    return dense_macs(module, input_hw)


def _is_pair(module: nn.Module) -> bool:
    return isinstance(module, (LowRankSparseLinear, LowRankSparseConv2d))


def model_params(model: nn.Module) -> int:
    """Stored parameter values of the whole model: pair modules count ``num_params()``,
    every other module its own parameters (weights, biases, BN affine, ...).  Buffers
    (BN running statistics, sparse indices) are not parameters and are not counted.  A
    parameter shared by several modules (tied weights, e.g. a language model's input
    embedding and LM head) is counted once, as ``model.parameters()`` yields it once."""
    total = 0
    seen: set[int] = set()
    for mod in model.modules():
        if _is_pair(mod):
            total += mod.num_params()
            continue
        if _is_compact_sparse(mod):
            continue
        for p in mod.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += int(p.numel())
    return total


def _is_compact_sparse(mod: nn.Module) -> bool:
    # a pair's compact sparse part: its values are counted by the pair's num_params()
    return isinstance(mod, CompactSparse)


def _dummy_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros of shape (1, *input_shape): token ids (int64) for a model whose input is an
    embedding (a Hugging Face model's ``get_input_embeddings()``), else floats in the
    model's dtype."""
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if isinstance(emb, nn.Embedding):
        return torch.zeros((1, *input_shape), dtype=torch.long, device=device)
    dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.float32
    return torch.zeros((1, *input_shape), dtype=dtype, device=device)


def model_macs(
    model: nn.Module, input_shape: tuple[int, ...], *, per_layer: bool = False
) -> int | dict[str, int]:
    """MACs per sample of one forward pass (Linear, Conv2d and the pair modules only;
    the definition in the module docstring).

    Runs one dummy forward (a batch of 1, zeros, the model's dtype and device; token
    ids 0 for a model whose ``get_input_embeddings()`` is an ``nn.Embedding``, such as a
    Hugging Face model, with ``input_shape`` = (tokens,)) with forward hooks, in eval
    mode and without gradients; the model's train/eval flags are restored afterwards.
    A ``transformers`` Conv1D counts as the Linear it is.

    Args:
        model: the network.
        input_shape: shape of one sample, without the batch dimension, e.g. (3, 32, 32).
        per_layer: return {qualified name: MACs} instead of the total.
    """
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0]
            if isinstance(mod, (nn.Linear, LowRankSparseLinear)) or is_conv1d(mod):
                vectors = x.numel() // x.shape[-1] // x.shape[0] if x.dim() > 1 else 1
                c = vectors * module_macs(mod)
            else:
                c = module_macs(mod, (int(x.shape[-2]), int(x.shape[-1])))
            counts[name] = counts.get(name, 0) + c

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d, LowRankSparseLinear, LowRankSparseConv2d)) or is_conv1d(mod):
            hooks.append(mod.register_forward_hook(make_hook(name)))
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(_dummy_input(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
        for m, t in flags.items():
            m.training = t
    return dict(counts) if per_layer else sum(counts.values())


dense_flops = renamed_function(dense_macs, "dense_flops")
model_flops = renamed_function(model_macs, "model_flops")
