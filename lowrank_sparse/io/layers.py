"""The pair modules of a file: their configs (the ``layers`` metadata) on save, and the
modules rebuilt from configs and tensors and swapped into the skeleton on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.conv import LowRankSparseConv2d
from ..nn.linear import LowRankSparseLinear

__all__ = ["PAIRS", "PAIR_TYPES", "pair_configs", "rebuild_pairs"]

#: the module classes a file records, by the "class" name in their config
PAIRS: dict[str, type[nn.Module]] = {
    "LowRankSparseLinear": LowRankSparseLinear,
    "LowRankSparseConv2d": LowRankSparseConv2d,
}
PAIR_TYPES = tuple(PAIRS.values())


def pair_configs(model: nn.Module) -> dict[str, Any]:
    """{qualified name: config()} of every pair module ("" when the model is one)."""
    return {name: mod.config() for name, mod in model.named_modules() if isinstance(mod, PAIR_TYPES)}


def rebuild_pairs(p: Path, net: nn.Module, layers: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Build each recorded pair from its config and its tensors and put it in ``net`` at
    its qualified name (torch's ``set_submodule``); returns the model (the pair itself
    when the file's model is one pair module).

    Raises:
        ValueError (naming the file): an unknown class, a config / tensors the class
            rejects, or a name the skeleton has no layer at.
    """
    for name, cfg in layers.items():
        cls = PAIRS.get(cfg.get("class"))
        if cls is None:
            raise ValueError(f"{p}: unknown layer class {cfg.get('class')!r} for {name!r}")
        prefix = f"{name}." if name else ""
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            mod = cls.from_config(cfg, sub)  # type: ignore[attr-defined]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{p}: cannot rebuild layer {name!r}: {e}") from None
        if not name:
            net = mod
            continue
        try:
            net.set_submodule(name, mod, strict=True)
        except AttributeError:
            raise ValueError(f"{p}: the model has no layer {name!r} to replace") from None
    return net
