"""Which layers of a model are compressible, and which ones ``keep_first_last`` protects."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..nn.conv1d import is_conv1d
from ..nn.geometry import pair

__all__ = ["describe_layer", "find_layers", "first_last_protected", "is_conv1d", "weight_matrix"]


def weight_matrix(mod: nn.Module) -> torch.Tensor:
    """The (out, in*kh*kw) weight of a layer as the solver sees it: a Linear's weight, a
    Conv2d's flattened, a Conv1D's transposed (a view, not a copy)."""
    if is_conv1d(mod):
        return mod.weight.T
    return mod.weight.reshape(mod.weight.shape[0], -1)


_UNSUPPORTED_CONVS = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def find_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Compressible layers of ``model`` and the reasons others were skipped.

    Returns:
        (layers, skipped): ``layers`` lists (qualified name, module) for every
        ``nn.Linear``, every ``transformers`` ``Conv1D`` (:func:`is_conv1d`) and every
        ``nn.Conv2d`` with ``groups == 1`` in module order;
        ``skipped`` maps grouped / depthwise convs and other conv kinds (Conv1d,
        Conv3d, transposed) to the reason they are not compressed.
    """
    layers: list[tuple[str, nn.Module]] = []
    skipped: dict[str, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or is_conv1d(mod):
            layers.append((name, mod))
        elif isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                kind = "depthwise" if mod.groups == mod.in_channels == mod.out_channels else "grouped"
                skipped[name] = f"{kind} conv (groups={mod.groups}): only groups=1 is compressed"
            else:
                layers.append((name, mod))
        elif isinstance(mod, _UNSUPPORTED_CONVS):
            skipped[name] = f"{type(mod).__name__} is not supported (only Linear and Conv2d)"
    return layers, skipped


#: Fewest layers for which ``keep_first_last`` protects anything.
MIN_LAYERS_TO_PROTECT = 3


def first_last_protected(names: Sequence[str], keep_first_last: bool = True) -> dict[str, str]:
    """The layers ``keep_first_last`` leaves untouched: {name: "first" | "last"}.

    The rule (used by :func:`lowrank_sparse.compress` on the model's compressible
    layers and by :func:`lowrank_sparse.budget.allocate` on the layers it is given):
    with ``keep_first_last`` and at least 3 layers, the first and the last layer in
    ``names`` (network order) are protected; with 1 or 2 layers nothing is (protecting
    them would leave nothing to compress).  With ``keep_first_last=False``, nothing is.
    """
    if not keep_first_last or len(names) < MIN_LAYERS_TO_PROTECT:
        return {}
    return {names[0]: "first", names[-1]: "last"}


def describe_layer(mod: nn.Module) -> str:
    """Short constructor-like text of a layer, for error messages."""
    if isinstance(mod, nn.Linear):
        return f"Linear(in_features={mod.in_features}, out_features={mod.out_features})"
    if is_conv1d(mod):
        return f"Conv1D(nf={mod.weight.shape[1]}, nx={mod.weight.shape[0]})"
    if isinstance(mod, nn.Conv2d):
        return (f"Conv2d(in_channels={mod.in_channels}, out_channels={mod.out_channels}, "
                f"kernel_size={pair(mod.kernel_size)})")
    return type(mod).__name__
