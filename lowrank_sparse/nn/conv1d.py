"""GPT-2's ``transformers.pytorch_utils.Conv1D`` as the ``nn.Linear`` it is.

Conv1D computes ``y = x @ W + b`` with W stored (in, out), i.e. a Linear whose weight is
``W.T``.  :class:`Conv1DLinear` is that Linear: it holds the (out, in) weight as any
``nn.Linear`` does (so every part of the library that reads ``module.weight`` sees the
weight as the solver does), but writes and reads its state dict in Conv1D's (in, out)
layout, so a model in which a Conv1D was replaced by it keeps the state dict of the
original architecture (files saved from it load into the original model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Conv1DLinear", "is_conv1d"]


def is_conv1d(mod: nn.Module) -> bool:
    """Whether ``mod`` is a ``transformers`` Conv1D (checked without importing transformers)."""
    cls = type(mod)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


class Conv1DLinear(nn.Linear):
    """An ``nn.Linear`` equal to a Conv1D, with Conv1D's (in, out) state-dict layout.

    ``weight``: (out, in) as in ``nn.Linear``; state dict entry ``weight``: (in, out).
    """

    @classmethod
    def from_conv1d(cls, conv: nn.Module) -> "Conv1DLinear":
        """The Linear of a Conv1D (weight (in, out)): same values, device, dtype,
        ``requires_grad`` and training flag; the Conv1D is not modified."""
        if not is_conv1d(conv):
            raise TypeError(f"from_conv1d expects a transformers Conv1D, got {type(conv).__name__}")
        n_in, n_out = (int(s) for s in conv.weight.shape)
        w = conv.weight.detach()
        new = cls(n_in, n_out, bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w.T)
            if conv.bias is not None:
                new.bias.copy_(conv.bias.detach())
        new.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            new.bias.requires_grad_(conv.bias.requires_grad)
        new.train(conv.training)
        return new

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        w = destination[prefix + "weight"]
        destination[prefix + "weight"] = w.T if keep_vars else w.T.contiguous()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the entry is always in Conv1D's (in, out) layout (also when in == out); an
        # (out, in) tensor of a non-square layer then fails nn.Linear's shape check
        key = prefix + "weight"
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            state_dict = dict(state_dict)
            state_dict[key] = w.T
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", from Conv1D"
