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

Before the layers are planned, a model fed 4-D images gets the memory format its whole
forward runs fastest in (:func:`choose_memory_format`): "channels_last" (NHWC) or
"contiguous" (NCHW).  On CPU, oneDNN's convolutions and torch's max pooling run several
times faster in channels_last at small channel counts, so the layers are timed in the
layout the model will run in.  Compare a planned model with a dense model given its own
fastest layout (``choose_memory_format(dense, x)``), or the layout alone is measured.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from ._parts import PairBase

__all__ = ["FORMS", "MEMORY_FORMATS", "ExecutionPlan", "LayerChoice", "choose_memory_format", "clear_execution",
           "plan_execution", "set_memory_format", "time_forms"]

#: the forms a pair may run in
FORMS = ("pair", "dense")
#: the memory formats a model fed 4-D images may run in (names of torch.memory_format)
MEMORY_FORMATS = ("contiguous", "channels_last")

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
    #: the memory format the model runs in (one of MEMORY_FORMATS)
    memory_format: str = "contiguous"
    #: median seconds of the whole forward in each memory format timed (empty: not timed)
    format_seconds: dict[str, float] = field(default_factory=dict)

    def forms(self) -> dict[str, str]:
        return {c.name: c.form for c in self.layers}

    def table(self) -> str:
        """One line per layer: form, ms per forward of each form, speedup over dense;
        the memory format first."""
        timed = ", ".join(f"{k} {1e3 * v:.3f} ms" for k, v in self.format_seconds.items())
        rows = [f"memory format: {self.memory_format}" + (f" (whole model: {timed})" if timed else "")]
        rows.append(f"{'layer':<28} {'form':<6} {'pair ms':>9} {'dense ms':>9} {'vs dense':>8}")
        for c in self.layers:
            rows.append(f"{c.name:<28} {c.form:<6} {1e3 * c.seconds['pair']:>9.3f} "
                        f"{1e3 * c.seconds['dense']:>9.3f} {c.speedup:>7.2f}x")
        return "\n".join(rows)


def _set_form(mod: PairBase, form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    mod._merged_weight = None if form == "pair" else _merged(mod, mod.to_dense_weight().detach())


def _merged(mod: PairBase, weight: Tensor) -> Tensor:
    """The merged (m, n) weight as the "dense" form holds it: a conv pair's as its
    kernel, in the memory format :func:`set_memory_format` gave the module."""
    if not hasattr(mod, "kernel_size"):
        return weight.contiguous()
    fmt = torch.channels_last if getattr(mod, "_memory_format", "contiguous") == "channels_last" else torch.contiguous_format
    return weight.reshape(mod.out_channels, mod.in_channels, *mod.kernel_size).contiguous(memory_format=fmt)


def clear_execution(model: nn.Module) -> None:
    """Every pair of ``model`` back to the "pair" form (merged weights freed)."""
    for mod in model.modules():
        if isinstance(mod, PairBase):
            mod._merged_weight = None


def _current_form(mod: PairBase) -> str:
    """The form ``mod`` runs in now: "dense" while it holds a merged weight, else "pair"."""
    return "pair" if getattr(mod, "_merged_weight", None) is None else "dense"


def time_forms(mod: PairBase, x: Tensor, form: str) -> float:
    """Seconds of one forward of ``mod`` on ``x`` in ``form`` (a wall-clock timer).  The
    merged weight is formed only when the module is not already in ``form``: re-forming
    it on every call would time a freshly allocated, cache-cold weight."""
    if _current_form(mod) != form:
        _set_form(mod, form)  # refuses an unknown form
    t0 = time.perf_counter()
    mod(x)
    return time.perf_counter() - t0


def interleaved(calls: Mapping[Any, Callable[[], float]], rounds: int, min_seconds: float) -> dict[Any, list[float]]:
    """Seconds of each zero-argument call (each returns its own seconds) over at least
    ``rounds`` interleaved rounds and at least ``min_seconds`` (at most ``10 * rounds``
    rounds), the order reversed every other round; warm-up calls are the caller's."""
    order = list(calls)
    times: dict[Any, list[float]] = {k: [] for k in order}
    t_end = time.perf_counter() + min_seconds
    r = 0
    while r < rounds or (time.perf_counter() < t_end and r < 10 * rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(float(calls[k]()))
        r += 1
    return times


def warm_then_time(call: Callable[[], float], warm: bool) -> float:
    """``call()`` (one timed call, returning its seconds), after one untimed ``call()``
    when ``warm``.  Interleaving candidates (for paired noise) leaves each one's weights
    and kernels cold at its turn, while a layer inside a model's forward runs warm: timed
    cold, rank-only factors of a 64->128 3x3 conv read about 0.5 ms slower than their
    0.6 ms, which over-predicted compressed layers and put reachable latency targets out
    of reach.  Callers warm only with the wall clock (a fake timer needs no warm-up)."""
    if warm:
        call()
    return call()


def forward(model: nn.Module, example: Any) -> Any:
    """``model`` on one example: a tensor, a tuple of positional inputs or a mapping of
    keyword inputs (as a tokenizer's output is passed)."""
    if isinstance(example, Mapping):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


def _model_timer(model: nn.Module, example: Any, memory_format: str) -> float:
    """Seconds of one forward of ``model`` (already in ``memory_format``) on ``example``."""
    t0 = time.perf_counter()
    forward(model, example)
    return time.perf_counter() - t0


def set_memory_format(model: nn.Module, memory_format: str) -> nn.Module:
    """Convert ``model``'s 4-D parameters and buffers to ``memory_format`` ("contiguous"
    or "channels_last") in place and return it; values are unchanged, and an input in
    either layout gives the same outputs."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model.to(memory_format=fmt)
    for mod in model.modules():  # merged conv kernels are held outside the parameters
        if isinstance(mod, PairBase):
            mod._memory_format = memory_format
            if getattr(mod, "_merged_weight", None) is not None:
                mod._merged_weight = _merged(mod, mod._merged_weight)
    return model


def is_image_batch(example: Any) -> bool:
    """A 4-D tensor: the only kind of input whose model has a memory-format choice."""
    return isinstance(example, Tensor) and example.dim() == 4


def choose_memory_format(model: nn.Module, example: Any, *, timer: Optional[Callable[..., float]] = None,
                         rounds: int = 7, min_seconds: float = 0.05) -> tuple[str, dict[str, float]]:
    """Put ``model`` in the memory format its whole forward on ``example`` runs fastest
    in (in place: parameters keep their values) and return (format, {format: median
    seconds}).

    Only a 4-D image batch has a choice: anything else leaves the model "contiguous"
    and untimed ({}).  The formats are timed in interleaved rounds (order alternated),
    after a warm-up call each, at least ``rounds`` rounds and ``min_seconds`` long;
    ``timer(model, example, format)`` -> seconds replaces the wall clock in tests.
    "channels_last" is kept only when its median is strictly smaller."""
    if not is_image_batch(example):
        return "contiguous", {}
    timer = timer or _model_timer
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for f in MEMORY_FORMATS:
                timer(set_memory_format(model, f), example, f)
            times = interleaved({f: (lambda f=f: timer(set_memory_format(model, f), example, f))
                                 for f in MEMORY_FORMATS}, rounds, min_seconds)
    finally:
        model.train(was_training)
    med = {f: statistics.median(v) for f, v in times.items()}
    best = "channels_last" if med["channels_last"] < med["contiguous"] else "contiguous"
    set_memory_format(model, best)
    return best, med


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
            forward(model, example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _key(mod: PairBase, x: Tensor) -> tuple:
    parts = tuple(tuple(t.shape) for t in (mod.U, mod.V) if t is not None)
    nnz = 0 if mod.sparse is None else int(mod.sparse.to_dense().count_nonzero())
    layout = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return (type(mod).__name__, mod.matrix_shape, parts, mod.structure, nnz, tuple(x.shape), x.dtype,
            str(x.device), torch.get_num_threads(), layout)


def _measure(mod: PairBase, x: Tensor, timer: Timer, rounds: int, min_seconds: float) -> dict[str, float]:
    """Median seconds of each form over interleaved rounds (order alternated), after a
    warm-up call of each; with the wall clock (:func:`time_forms`) each timed call is
    warm (:func:`warm_then_time`)."""
    warm = timer is time_forms
    with torch.inference_mode():
        for f in FORMS:
            timer(mod, x, f)
        times = interleaved({f: (lambda f=f: warm_then_time(lambda: timer(mod, x, f), warm)) for f in FORMS},
                            rounds, min_seconds)
    return {f: statistics.median(v) for f, v in times.items()}


def plan_execution(model: nn.Module, example: Any, *, timer: Optional[Timer] = None, rounds: int = 7,
                   min_seconds: float = 0.05, cache: bool = True, memory_format: str = "auto",
                   format_timer: Optional[Callable[..., float]] = None) -> ExecutionPlan:
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
        memory_format: "auto" (time the whole model in each format, with every pair in
            its "pair" form, and keep the faster: :func:`choose_memory_format`), or one
            of MEMORY_FORMATS to set it without timing.
        format_timer: the timer of :func:`choose_memory_format` (tests pass a fake one).

    A layer gets the "dense" form unless the "pair" form's median is strictly smaller.
    """
    if memory_format != "auto" and memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be 'auto' or one of {MEMORY_FORMATS}, got {memory_format!r}")
    timer = timer or time_forms
    was_training = model.training
    model.eval()
    clear_execution(model)
    plan = ExecutionPlan()
    if memory_format == "auto":
        plan.memory_format, plan.format_seconds = choose_memory_format(
            model, example, timer=format_timer, rounds=rounds, min_seconds=min_seconds)
    else:
        set_memory_format(model, memory_format)
        plan.memory_format = memory_format
    inputs = _inputs(model, example)
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
