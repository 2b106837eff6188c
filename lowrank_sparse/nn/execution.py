"""Execution plan: run each compressed layer in the form that is fastest on this machine.

A module pair can compute its output in two exact ways:

* ``"pair"``: the low-rank path as two products (two GEMMs, or two convolutions) plus
  the sparse path in its compact form (a smaller dense product for removed rows /
  channels, CSR, N:M); this is what the stored model is;
* ``"dense"``: one product with the merged weight U V + S, as the original layer did
  (the merged weight is held in memory beside the compact parts; the saved file and the
  parameters are unchanged).

:func:`plan_execution` runs the model once on an example batch to find each pair's
input, times both forms on that input (interleaved rounds, medians) and keeps the
faster: a layer in the "dense" form runs exactly as fast as the dense original would,
so the planned model is never slower than the dense model beyond timing noise.  The
choice is cached per (layer shapes, structure, stored values, input shape, dtype,
device, threads) for the process.  The dense form is used in eval mode only; call
:func:`clear_execution` (or plan again) after changing the weights.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ._parts import PairBase

__all__ = ["FORMS", "ExecutionPlan", "LayerChoice", "clear_execution", "plan_execution", "time_forms"]

#: the forms a pair may run in
FORMS = ("pair", "dense")

#: timer(module, x, form) -> seconds of one forward of ``module`` on ``x`` in ``form``
Timer = Callable[[PairBase, Tensor, str], float]

_CACHE: dict[tuple, tuple[str, dict[str, float]]] = {}


@dataclass
class LayerChoice:
    """The form one layer got and the median seconds per forward of each form."""

    name: str
    form: str
    seconds: dict[str, float]

    @property
    def speedup(self) -> float:
        """Seconds of the dense form over seconds of the chosen one (>= 1 up to noise)."""
        return self.seconds["dense"] / max(self.seconds[self.form], 1e-12)


@dataclass
class ExecutionPlan:
    """Per-layer choices of :func:`plan_execution`, in module order."""

    layers: list[LayerChoice] = field(default_factory=list)

    def forms(self) -> dict[str, str]:
        return {c.name: c.form for c in self.layers}

    def table(self) -> str:
        """One line per layer: form, ms per forward of each form, speedup over dense."""
        rows = [f"{'layer':<28} {'form':<6} {'pair ms':>9} {'dense ms':>9} {'vs dense':>8}"]
        for c in self.layers:
            rows.append(f"{c.name:<28} {c.form:<6} {1e3 * c.seconds['pair']:>9.3f} "
                        f"{1e3 * c.seconds['dense']:>9.3f} {c.speedup:>7.2f}x")
        return "\n".join(rows)


def _set_form(mod: PairBase, form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    mod._merged_weight = mod.to_dense_weight().detach().contiguous() if form == "dense" else None


def clear_execution(model: nn.Module) -> None:
    """Every pair of ``model`` back to the "pair" form (merged weights freed)."""
    for mod in model.modules():
        if isinstance(mod, PairBase):
            mod._merged_weight = None


def time_forms(mod: PairBase, x: Tensor, form: str) -> float:
    """Seconds of one forward of ``mod`` on ``x`` in ``form`` (a wall-clock timer)."""
    _set_form(mod, form)
    t0 = time.perf_counter()
    mod(x)
    return time.perf_counter() - t0


def _inputs(model: nn.Module, example: Any) -> dict[str, Tensor]:
    """The input of every pair module on one forward of ``example``."""
    seen: dict[str, Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(mod: nn.Module, args: tuple, out: Any) -> None:
            seen.setdefault(name, args[0].detach())
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, PairBase)]
    try:
        with torch.inference_mode():
            if isinstance(example, dict):  # keyword inputs, as a tokenizer's output is passed
                model(**example)
            elif isinstance(example, tuple):
                model(*example)
            else:
                model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _key(mod: PairBase, x: Tensor) -> tuple:
    parts = tuple(tuple(t.shape) for t in (mod.U, mod.V) if t is not None)
    nnz = 0 if mod.sparse is None else int(mod.sparse.to_dense().count_nonzero())
    return (type(mod).__name__, mod.matrix_shape, parts, mod.structure, nnz, tuple(x.shape), x.dtype,
            str(x.device), torch.get_num_threads())


def _measure(mod: PairBase, x: Tensor, timer: Timer, rounds: int, min_seconds: float) -> dict[str, float]:
    """Median seconds of each form over interleaved rounds (order alternated), after a
    warm-up call of each."""
    times: dict[str, list[float]] = {f: [] for f in FORMS}
    with torch.inference_mode():
        for f in FORMS:
            timer(mod, x, f)
        t_end = time.perf_counter() + min_seconds
        r = 0
        while r < rounds or time.perf_counter() < t_end:
            for f in (FORMS if r % 2 == 0 else FORMS[::-1]):
                times[f].append(timer(mod, x, f))
            r += 1
            if r >= 10 * rounds:
                break
    return {f: statistics.median(v) for f, v in times.items()}


def plan_execution(model: nn.Module, example: Any, *, timer: Optional[Timer] = None, rounds: int = 7,
                   min_seconds: float = 0.05, cache: bool = True) -> ExecutionPlan:
    """Choose and set each pair module's form in place (``model`` is the compressed
    model; its parameters are not changed); returns the plan.

    Args:
        model: a model holding LowRankSparseLinear / LowRankSparseConv2d modules.
        example: one input batch (a tensor, a tuple of positional inputs, or a dict of
            keyword inputs such as {"input_ids", "attention_mask"}) of the shape the
            model will run at.
        timer: ``timer(module, x, form)`` -> seconds (default :func:`time_forms`);
            tests pass a fake one.
        rounds: at least this many interleaved timing rounds per layer.
        min_seconds: and at least this long per layer.
        cache: reuse the choice (and timings) of an identical layer at the same input
            shape, dtype, device and thread count, measured earlier in this process.

    A layer gets the "dense" form unless the "pair" form's median is strictly smaller.
    """
    timer = timer or time_forms
    was_training = model.training
    model.eval()
    clear_execution(model)
    inputs = _inputs(model, example)
    plan = ExecutionPlan()
    try:
        for name, mod in model.named_modules():
            if not isinstance(mod, PairBase) or name not in inputs:
                continue
            x = inputs[name]
            key = _key(mod, x)
            if cache and key in _CACHE:
                form, sec = _CACHE[key]
            else:
                sec = _measure(mod, x, timer, rounds, min_seconds)
                form = "pair" if sec["pair"] < sec["dense"] else "dense"
                if cache:
                    _CACHE[key] = (form, sec)
            _set_form(mod, form)
            plan.layers.append(LayerChoice(name, form, sec))
    except BaseException:
        clear_execution(model)
        raise
    finally:
        model.train(was_training)
    return plan
