"""Which layers compress() replaces: compressible layers filtered by name patterns, a
predicate and ``keep_first_last``."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Optional, Union

import torch.nn as nn

from ..calibrate import find_layers, first_last_protected

__all__ = ["FilterFn", "Patterns", "matches", "select_layers"]

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
                      f"nn.Conv2d with groups=1){extra}")


def select_layers(
    model: nn.Module,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    filter_fn: Optional[FilterFn] = None,
    keep_first_last: bool = True,
) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The layers to compress, in module order, and why the others are left out.

    A compressible layer (:func:`~lowrank_sparse.calibrate.find_layers`) is selected
    when it matches ``include`` (if given), does not match ``exclude``, ``filter_fn``
    (if given) returns True for it, and ``keep_first_last`` does not protect it (the
    rule of :func:`~lowrank_sparse.calibrate.first_last_protected`, over all the
    model's compressible layers).

    Returns:
        (selected (name, module) pairs, skipped {name: reason}).

    Raises:
        ValueError: the model has no compressible layer, or none is left.
    """
    all_layers, skipped = find_layers(model)
    if not all_layers:
        raise _no_layers(model, skipped)
    protected = first_last_protected([n for n, _ in all_layers], keep_first_last)
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
    return selected, skipped
