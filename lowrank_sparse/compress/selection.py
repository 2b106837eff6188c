"""Which layers compress() replaces: compressible layers filtered by name patterns, a
predicate and ``keep_first_last``; output embeddings (a language model's head) and
layers with a weight shared with another module (tied weights) are left out unless
``include`` names them; the selected ``transformers`` Conv1D layers (GPT-2) are swapped
for the equal :class:`~lowrank_sparse.nn.Conv1DLinear` in the model given (compress()
gives its copy)."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from ..calibrate import find_layers, first_last_protected

__all__ = ["FilterFn", "Patterns", "kept_by_default", "matches", "select_layers"]

#: filter_fn(qualified name, module) -> True to compress the layer.
FilterFn = Callable[[str, nn.Module], bool]
Patterns = Optional[Union[str, list[str]]]


def matches(name: str, patterns: Any) -> bool:
    """Whether ``name`` matches one of the fnmatch ``patterns`` (a str or a list; None: no)."""
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _no_layers(model: nn.Module, skipped: dict[str, str]) -> ValueError:
    extra = f" (skipped: {'; '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""
    return ValueError(f"model {type(model).__name__} has no compressible layer (nn.Linear or "
                      f"nn.Conv2d with groups=1 or transformers Conv1D){extra}")


def kept_by_default(model: nn.Module) -> dict[str, str]:
    """{name: reason} of the layers left dense unless ``include`` names them: the
    model's output embeddings (``get_output_embeddings()`` of a Hugging Face model, the
    LM head) and every module whose weight is also another module's (tied weights)."""
    owners: dict[int, list[str]] = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), []).append(name)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    out: dict[str, str] = {}
    for name, mod in model.named_modules():
        tied = [n for n in owners.get(id(getattr(mod, "weight", None)), []) if n != name]
        if tied:
            out[name] = f"weight tied to {', '.join(tied)}: kept dense (name it in include to compress it)"
        elif head is not None and mod is head:
            out[name] = "output embeddings (LM head): kept dense (name it in include to compress it)"
    return out


def _linear_conv1d(model: nn.Module, selected: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Swap each selected Conv1D in ``model`` for its Conv1DLinear; the new pairs."""
    from ..nn.conv1d import Conv1DLinear, is_conv1d

    out = []
    for name, mod in selected:
        if is_conv1d(mod):
            mod = Conv1DLinear.from_conv1d(mod)
            model.set_submodule(name, mod)
        out.append((name, mod))
    return out


def select_layers(
    model: nn.Module,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    filter_fn: Optional[FilterFn] = None,
    keep_first_last: bool = True,
    linearize_conv1d: bool = True,
) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The layers to compress, in module order, and why the others are left out.

    A compressible layer (:func:`~lowrank_sparse.calibrate.find_layers`) is selected
    when it matches ``include`` (if given), does not match ``exclude``, ``filter_fn``
    (if given) returns True for it, and ``keep_first_last`` does not protect it (the
    rule of :func:`~lowrank_sparse.calibrate.first_last_protected`, over all the
    model's compressible layers).  The layers :func:`kept_by_default` leaves dense (the
    LM head, tied weights) are selected only when ``include`` names them.

    Args:
        linearize_conv1d: replace each selected ``transformers`` Conv1D **in
            ``model``** by the equal :class:`~lowrank_sparse.nn.Conv1DLinear` (an
            ``nn.Linear`` with Conv1D's state-dict layout), as compress() does on its
            copy; the returned pairs name the new modules.

    Returns:
        (selected (name, module) pairs, skipped {name: reason}).

    Raises:
        ValueError: the model has no compressible layer, or none is left.
    """
    all_layers, skipped = find_layers(model)
    if not all_layers:
        raise _no_layers(model, skipped)
    # first / last over every compressible layer, the kept-by-default ones included: a
    # language model's last layer is its (kept) head, so no further layer is protected
    protected = first_last_protected([n for n, _ in all_layers], keep_first_last)
    kept = kept_by_default(model)
    for name, _ in all_layers:
        if name in kept and not matches(name, include):
            skipped[name] = kept[name]
    all_layers = [(n, m) for n, m in all_layers if n not in skipped]
    selected: list[tuple[str, nn.Module]] = []
    for name, mod in all_layers:
        if include is not None and not matches(name, include):
            skipped[name] = "not matched by include"
        elif matches(name, exclude):
            skipped[name] = "matched by exclude"
        elif filter_fn is not None and not filter_fn(name, mod):
            skipped[name] = "rejected by filter_fn"
        elif name in protected:
            skipped[name] = f"{protected[name]} layer kept (keep_first_last=True)"
        else:
            selected.append((name, mod))
    if not selected:
        raise ValueError(
            "no layer left to compress after include / exclude / filter_fn / keep_first_last: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return (_linear_conv1d(model, selected) if linearize_conv1d else selected), skipped
