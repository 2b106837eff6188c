"""Which selected layers feed which: the order constraints of sequential calibration.

With ``sequential=True`` a layer is fitted to the inputs the partially compressed
model feeds it, so it must wait for the layers its input depends on.  Layers whose
inputs do not depend on each other (the query / key / value projections of one
attention block, say) can be solved at the same time.

:func:`layer_ancestors` finds the dependencies with one forward pass of one batch:
each selected layer's output is replaced by a clone of a fresh autograd leaf (same
values), and each layer's input graph is walked back to the leaves it reaches.  The
pass runs in eval mode with the modules' training flags restored, and changes no
parameter or buffer.  When the pass fails, every layer is taken to depend on all
layers before it (module order), which is always safe.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["layer_ancestors"]


def _reached_leaves(t: Any, leaves: dict[int, str]) -> set[str]:
    """Names of the leaves in ``leaves`` (by tensor id) that ``t``'s autograd graph reaches."""
    if not isinstance(t, torch.Tensor):
        return set()
    if t.grad_fn is None:
        return {leaves[id(t)]} if id(t) in leaves else set()
    found: set[str] = set()
    seen: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if var is not None and id(var) in leaves:
            found.add(leaves[id(var)])
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def _direct_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, set[str]]:
    """{layer: the selected layers whose outputs its input reaches without passing
    through another selected layer}, from one forward pass of ``x``."""
    modules = dict(model.named_modules())
    leaves: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # holds the leaves alive, so their ids stay unique
    direct: dict[str, set[str]] = {n: set() for n in names}

    def pre(name: str):
        def hook(mod: nn.Module, inp: Any) -> None:
            for t in inp:
                direct[name] |= _reached_leaves(t, leaves)
        return hook

    def post(name: str):
        def hook(mod: nn.Module, inp: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor):
                return None
            leaf = out.detach().requires_grad_(True)
            leaves[id(leaf)] = name
            keep.append(leaf)
            return leaf.clone()
        return hook

    handles = []
    for n in names:
        handles.append(modules[n].register_forward_pre_hook(pre(n)))
        handles.append(modules[n].register_forward_hook(post(n)))
    was_training = {n: m.training for n, m in modules.items()}
    model.eval()
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for n, m in modules.items():
            m.training = was_training[n]
    return direct


def layer_ancestors(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, set[str]]:
    """{layer: every selected layer its input depends on (transitively)}.

    Args:
        model: the network (unchanged).
        names: the selected layers' qualified names, in module order.
        x: one calibration batch, on the model's device.
    """
    try:
        direct = _direct_inputs(model, names, x)
    except Exception:  # untraceable forward: fall back to module order
        return {n: set(names[:i]) for i, n in enumerate(names)}
    anc: dict[str, set[str]] = {}

    def visit(n: str, stack: tuple[str, ...]) -> set[str]:
        if n in anc:
            return anc[n]
        out: set[str] = set()
        for d in direct[n]:
            if d != n and d not in stack:
                out |= {d} | visit(d, stack + (n,))
        anc[n] = out
        return out

    for n in names:
        visit(n, ())
    return anc
