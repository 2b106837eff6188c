"""Per-layer latency cost model for ``Budget(latency=...)``.

For every compressible layer the model holds

* ``dense``: median seconds of one forward of the original layer on its real input shape;
* ``pair_seconds(rank, density, slices)``: seconds of the L + S pair in its "pair" form
  (two low-rank products + the compact sparse product), interpolated (bilinear in rank
  and density, monotone) from timings at a small grid of ranks and densities for the
  layer's sparsity structure;

and a candidate's cost is ``min(dense, pair)``: the faster exact form, as
:func:`lowrank_sparse.nn.execution.plan_execution` will choose it (the "dense" form runs
the merged U V + S with the original layer's product, so a compressed layer never costs
more than its dense original).  ``rest_seconds`` is the time of everything that is not a
compressible layer (measured once on the whole dense model when an example input is
given; 0 otherwise, which makes the target apply to the compressible layers alone, a
stricter condition: (a + rest) / (b + rest) <= a / b for a <= b).

Timing: all candidates of one layer and the dense layer are timed in interleaved rounds
(order reversed every other round), medians, at the current torch thread count, after a
warm-up call each.  Tables are cached for the process per (layer geometry, structure,
input shape, dtype, threads, grid), so repeated layers (a transformer's blocks) are timed
once.  Candidates with ``slices > 1`` (ALDS) are looked up at the plain rank with the same
number of low-rank parameters (an approximation: their first factor is block-diagonal).

Memory format: :meth:`LatencyModel.of_model` first finds the layout the dense model runs
fastest in (:func:`lowrank_sparse.nn.execution.choose_memory_format`, on a copy) and
times everything in it: the whole model, and each conv layer's forms on an input in that
layout.  The execution planner then runs the compressed model in the layout it measures
fastest, so the prediction and the measurement compare like with like.

Tests and callers with their own measurements build tables with :meth:`LayerTimes.from_function`
or inject a ``timer``.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..structure import Structure, parse_structure

__all__ = ["LatencyModel", "LayerTimes", "clear_latency_cache", "layer_inputs"]

#: timer(module, x) -> seconds of one forward of ``module`` on ``x``
Timer = Callable[[nn.Module, Tensor], float]

#: grid densities of S (unstructured / group structures); N:M uses its fixed density
DENSITY_GRID = (0.02, 0.08, 0.2, 0.4)
#: grid ranks (per layer: geometric from 1 to the largest rank that saves parameters)
RANK_POINTS = 5
#: fallback input rows of a linear layer / images of a conv without an example input
FALLBACK_ROWS = 512
FALLBACK_IMAGES = 32

_CACHE: dict[tuple, "LayerTimes"] = {}


def clear_latency_cache() -> None:
    """Forget every cached layer table (timings are per process)."""
    _CACHE.clear()


def _wall_timer(mod: nn.Module, x: Tensor) -> float:
    t0 = time.perf_counter()
    mod(x)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- tables
def _interp(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Piecewise-linear through (xs, ys) (ascending xs); held below xs[0]; beyond xs[-1]
    extended with the last segment's slope (never decreasing)."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(xs) == 1:
        return float(ys[0]) if x <= xs[0] else float(ys[0] * x / max(xs[0], 1e-12))
    if x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    slope = max(0.0, (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-12))
    return float(ys[-1] + slope * (x - xs[-1]))


def _interp_many(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """:func:`_interp` at every entry of ``x``."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if len(xs) == 1:
        return np.where(x <= xs[0], ys[0], ys[0] * x / max(xs[0], 1e-12))
    slope = max(0.0, (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-12))
    return np.where(x <= xs[-1], np.interp(x, xs, ys), ys[-1] + slope * (x - xs[-1]))


def _interp_rows(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Row k of ``ys`` ((k, len(xs))) interpolated at ``x[k]`` as :func:`_interp` does."""
    if len(xs) == 1:
        return np.where(x <= xs[0], ys[:, 0], ys[:, 0] * x / max(xs[0], 1e-12))
    j = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2)
    rows = np.arange(len(x))
    x0, x1 = xs[j], xs[j + 1]
    y0, y1 = ys[rows, j], ys[rows, j + 1]
    w = (x - x0) / np.maximum(x1 - x0, 1e-12)
    inner = y0 + np.clip(w, 0.0, 1.0) * (y1 - y0)  # held below xs[0], as np.interp
    slope = np.maximum(0.0, (ys[:, -1] - ys[:, -2]) / max(xs[-1] - xs[-2], 1e-12))
    return np.where(x <= xs[-1], inner, ys[:, -1] + slope * (x - xs[-1]))


@dataclass
class LayerTimes:
    """Latency table of one layer (seconds per forward on its input).

    Attributes:
        dense: the original layer's median seconds.
        ranks: grid ranks (ascending, >= 1); densities: grid densities (ascending, 0 first).
        pair: (len(ranks), len(densities)) seconds of the pair form; monotone
            non-decreasing along both axes.
        sparse: (len(densities),) seconds of a sparse-only pair (rank 0); entry 0 unused.
        m, n: weight shape (for the slice-equivalent rank).
        fn: instead of the grid, pair_seconds(rank, density, slices) from a function.
    """

    dense: float
    ranks: np.ndarray = field(default_factory=lambda: np.zeros(0))
    densities: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pair: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sparse: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m: int = 0
    n: int = 0
    fn: Optional[Callable[[int, float, int], float]] = None

    @classmethod
    def from_function(cls, dense: float, fn: Callable[[int, float, int], float]) -> "LayerTimes":
        """A table whose pair form costs ``fn(rank, density, slices)`` seconds."""
        if not (math.isfinite(dense) and dense > 0.0):
            raise ValueError(f"dense seconds must be finite and > 0, got {dense}")
        return cls(dense=float(dense), fn=fn)

    def pair_seconds(self, rank: int, density: float, slices: int = 1) -> float:
        """Seconds of the pair form (interpolated on the grid)."""
        if self.fn is not None:
            return float(self.fn(int(rank), float(density), int(slices)))
        r = float(rank)
        if slices > 1 and self.m + self.n > 0:  # same low-rank parameters at slices = 1
            r = rank * (slices * self.m + self.n) / (self.m + self.n)
        d = float(density)
        ds = self.densities
        if r <= 0.0:
            return _interp(d, ds[1:], self.sparse[1:]) if len(ds) > 1 else self.dense
        rs = self.ranks.astype(np.float64)
        col = np.array([_interp(r, rs, self.pair[:, j]) for j in range(len(ds))])
        return _interp(d, ds, col)

    def seconds(self, rank: int, density: float, slices: int = 1) -> float:
        """Cost of a candidate: its faster exact form (never more than ``dense``)."""
        return min(self.dense, self.pair_seconds(rank, density, slices))

    def seconds_many(self, ranks: np.ndarray, densities: np.ndarray, slices: np.ndarray) -> np.ndarray:
        """:meth:`seconds` of many candidates at once ((k,) arrays -> (k,) seconds)."""
        ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
        dens = np.asarray(densities, dtype=np.float64).reshape(-1)
        slices = np.asarray(slices, dtype=np.float64).reshape(-1)
        if self.fn is not None:
            pair = np.array([self.pair_seconds(int(r), float(d), int(g)) for r, d, g in zip(ranks, dens, slices)])
            return np.minimum(self.dense, pair) if len(pair) else np.zeros(0)
        ds = self.densities
        r = np.where(slices > 1, ranks * (slices * self.m + self.n) / max(self.m + self.n, 1), ranks)
        out = np.full(len(ranks), float(self.dense))
        sparse = r <= 0.0
        if len(ds) > 1 and sparse.any():
            out[sparse] = _interp_many(dens[sparse], ds[1:], self.sparse[1:])
        if (~sparse).any():
            rs = self.ranks.astype(np.float64)
            cols = np.stack([_interp_many(r[~sparse], rs, self.pair[:, j]) for j in range(len(ds))], axis=1)
            out[~sparse] = _interp_rows(dens[~sparse], ds, cols)
        return np.minimum(self.dense, out)

    def form(self, rank: int, density: float, slices: int = 1) -> str:
        """"pair" when the pair form is predicted strictly faster, else "dense" (merged)."""
        return "pair" if self.pair_seconds(rank, density, slices) < self.dense else "dense"


# ----------------------------------------------------------------------------- measuring
def _random_pair(mod: nn.Module, rank: int, density: float, st: Structure, gen: torch.Generator) -> nn.Module:
    """A pair module with ``mod``'s geometry, random factors of ``rank`` and a random S
    of ``density`` under ``st`` (values do not matter for the time, shapes do)."""
    from ..nn import LowRankSparseConv2d, LowRankSparseLinear
    from ..nn.sparse import compact_from_dense
    from ..ops.prox import project

    w = mod.weight.detach()
    m = int(w.shape[0])
    n = int(w[0].numel())
    block = n // int(w.shape[1])
    U = V = None
    if rank > 0:
        U = torch.randn(m, rank, generator=gen).to(w.dtype)
        V = torch.randn(rank, n, generator=gen).to(w.dtype)
    sparse = None
    if density > 0.0:
        s = torch.randn(m, n, generator=gen, dtype=torch.float64)
        k = st.budget(density, m, n)
        S = project(s, k, st).to(w.dtype)
        sparse = compact_from_dense(S, st, kernel_numel=block)
    bias = None if mod.bias is None else mod.bias.detach()
    if isinstance(mod, nn.Conv2d):
        return LowRankSparseConv2d(mod.in_channels, m, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                   padding_mode=mod.padding_mode, U=U, V=V, sparse=sparse, bias=bias,
                                   structure=st).eval()
    return LowRankSparseLinear(n, m, U=U, V=V, sparse=sparse, bias=bias, structure=st).eval()


def _grid(m: int, n: int, st: Structure) -> tuple[np.ndarray, np.ndarray]:
    rmax = max(1, (m * n) // (m + n))
    ranks = np.unique(np.round(np.geomspace(1, rmax, RANK_POINTS)).astype(np.int64))
    dens = (st.n / st.m,) if st.kind == "nm" else DENSITY_GRID
    return ranks, np.array((0.0,) + tuple(dens))


def _geometry(mod: nn.Module) -> tuple:
    if isinstance(mod, nn.Conv2d):
        return ("conv", tuple(mod.weight.shape), mod.stride, mod.padding, mod.dilation, mod.padding_mode,
                mod.bias is not None)
    return ("linear", tuple(mod.weight.shape), mod.bias is not None)


def measure_layer(mod: nn.Module, input_shape: Sequence[int], structure: Structure | str = "unstructured", *,
                  dtype: torch.dtype = torch.float32, timer: Optional[Timer] = None, rounds: int = 5,
                  min_seconds: float = 0.0, cache: Optional[bool] = None, seed: int = 0,
                  memory_format: str = "contiguous") -> LayerTimes:
    """Time ``mod`` (an nn.Linear / nn.Conv2d with groups == 1) and its pair forms on a
    random input of ``input_shape``: the grid of :func:`_grid`, interleaved rounds.

    ``cache`` (default: only with the wall-clock timer) reuses an identical layer's table.
    ``memory_format`` ("contiguous" or "channels_last"): the layout of a 4-D input and of
    every candidate's kernels (``mod`` itself is timed as a copy and left as it is)."""
    from ..nn.execution import interleaved, set_memory_format, warm_then_time
    w = mod.weight
    m, n = int(w.shape[0]), int(w[0].numel())
    st = parse_structure(structure, block=n // int(w.shape[1]))
    ranks, dens = _grid(m, n, st)
    use_cache = (timer is None) if cache is None else cache
    key = (_geometry(mod), st.name, st.block, tuple(int(s) for s in input_shape), dtype, torch.get_num_threads(),
           tuple(ranks.tolist()), tuple(dens.tolist()), rounds, memory_format)
    if use_cache and key in _CACHE:
        return _CACHE[key]
    warm = timer is None  # the wall clock times each candidate warm, as it runs inside a forward
    timer = timer or _wall_timer
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(int(s) for s in input_shape), generator=gen).to(dtype)
    if x.dim() == 4 and memory_format == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    dense = mod if memory_format == "contiguous" else set_memory_format(copy.deepcopy(mod), memory_format)
    cands: list[tuple[tuple[int, float], nn.Module]] = [((-1, 0.0), dense)]
    for r in ranks:
        for d in dens:
            cands.append(((int(r), float(d)), _random_pair(mod, int(r), float(d), st, gen)))
    for d in dens[1:]:
        cands.append(((0, float(d)), _random_pair(mod, 0, float(d), st, gen)))
    for _, c in cands[1:]:
        set_memory_format(c, memory_format)
    was = dense.training
    dense.eval()
    try:
        with torch.inference_mode():
            for _, c in cands:
                c(x)
            times = interleaved({k: (lambda c=c: warm_then_time(lambda: timer(c, x), warm)) for k, c in cands},
                                rounds, min_seconds)
    finally:
        dense.train(was)
    med = {k: statistics.median(v) for k, v in times.items()}
    pair = np.array([[med[(int(r), float(d))] for d in dens] for r in ranks])
    pair = np.maximum.accumulate(np.maximum.accumulate(pair, axis=0), axis=1)  # monotone in rank and density
    sparse = np.array([0.0] + [med[(0, float(d))] for d in dens[1:]])
    sparse[1:] = np.maximum.accumulate(sparse[1:])
    sparse[1:] = np.minimum(sparse[1:], pair[0, 1:])  # dropping the rank-1 part never costs more
    out = LayerTimes(dense=med[(-1, 0.0)], ranks=ranks, densities=dens, pair=pair, sparse=sparse, m=m, n=n)
    if use_cache:
        _CACHE[key] = out
    return out


def layer_inputs(model: nn.Module, example: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(input shape, dtype) of every nn.Linear / nn.Conv2d of ``model`` on one forward of
    ``example`` (a tensor, a tuple of positional inputs, or a dict of keyword inputs)."""
    seen: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            def rec(m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                if args and isinstance(args[0], Tensor):
                    seen.setdefault(name, (tuple(args[0].shape), args[0].dtype))
            hooks.append(mod.register_forward_hook(rec))
    try:
        _run(model, example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _run(model: nn.Module, example: Any) -> Any:
    from ..nn.execution import forward

    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return forward(model, example)
    finally:
        model.train(was)


def model_seconds(model: nn.Module, example: Any, rounds: int = 9) -> float:
    """Median wall seconds of one forward of ``model`` on ``example`` (after 2 warm-ups)."""
    for _ in range(2):
        _run(model, example)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        _run(model, example)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# ----------------------------------------------------------------------------- the model
class LatencyModel:
    """Latency tables of a network's compressible layers and the time of the rest.

    Build it

    * from measurements: ``LatencyModel.of_model(model, example)`` records every layer's
      input shape on ``example`` (batch as given) and times the whole dense model once;
      the layer tables are measured when the allocator binds the model to the layers it
      compresses (:meth:`bind`), only for those, with the run's structure;
    * from a given table: ``LatencyModel({name: LayerTimes, ...}, rest_seconds=...)``.

    Pass it as ``Budget(latency=0.5, latency_model=...)``; without one, compress() builds
    it from the calibration statistics with fallback input shapes (see :meth:`bind`).
    """

    def __init__(self, layers: Optional[Mapping[str, LayerTimes]] = None, *, rest_seconds: float = 0.0,
                 inputs: Optional[Mapping[str, tuple[tuple[int, ...], torch.dtype]]] = None,
                 model_seconds: Optional[float] = None, timer: Optional[Timer] = None, rounds: int = 5,
                 min_seconds: float = 0.0, memory_format: str = "contiguous") -> None:
        self.layers: dict[str, LayerTimes] = dict(layers or {})
        #: the layout every timing is taken in (see the module's docstring)
        self.memory_format = memory_format
        if not (math.isfinite(rest_seconds) and rest_seconds >= 0.0):
            raise ValueError(f"rest_seconds must be finite and >= 0, got {rest_seconds}")
        self.rest_seconds = float(rest_seconds)
        self.inputs = dict(inputs or {})
        self.model_seconds = model_seconds
        self.timer, self.rounds, self.min_seconds = timer, int(rounds), float(min_seconds)
        self.notes: list[str] = []
        #: set by compress(): the allocator's predicted seconds / ratio / per-layer forms
        self.prediction: Optional[dict[str, Any]] = None

    @classmethod
    def of_model(cls, model: nn.Module, example: Any, **kw: Any) -> "LatencyModel":
        """Input shapes of every layer on ``example`` and the dense model's seconds, in
        the memory format the dense model runs fastest in (timed on a copy; ``model``
        is left as it is)."""
        from ..nn.execution import choose_memory_format, is_image_batch

        probe = copy.deepcopy(model) if is_image_batch(example) else model
        fmt, _ = choose_memory_format(probe, example)
        inputs = layer_inputs(probe, example)
        return cls(inputs=inputs, model_seconds=model_seconds(probe, example), memory_format=fmt, **kw)

    def __contains__(self, name: str) -> bool:
        return name in self.layers

    def __getitem__(self, name: str) -> LayerTimes:
        return self.layers[name]

    def dense_seconds(self) -> float:
        """Predicted seconds of the dense model: the tabled layers' dense times + the rest."""
        return self.rest_seconds + sum(t.dense for t in self.layers.values())

    def bind(self, selected: Sequence[tuple[str, nn.Module]], stats: Optional[Mapping[str, Any]] = None,
             structure: Structure | str = "unstructured") -> "LatencyModel":
        """A model with a table for every selected (name, module) layer: given tables
        are kept; the others are measured on the recorded input shape, else on a
        fallback shape from ``stats`` (LayerStats: conv (FALLBACK_IMAGES, C, H, W) with
        the calibration's in_hw; linear (FALLBACK_ROWS, n)).  ``rest_seconds`` is the
        dense model's measured seconds minus the selected layers' dense times when the
        model was timed (clipped at 0), else the given value."""
        out = LatencyModel(self.layers, rest_seconds=self.rest_seconds, inputs=self.inputs,
                           model_seconds=self.model_seconds, timer=self.timer, rounds=self.rounds,
                           min_seconds=self.min_seconds, memory_format=self.memory_format)
        fallback = []
        for name, mod in selected:
            if name in out.layers:
                continue
            if name in self.inputs:
                shape, dtype = self.inputs[name]
            else:
                shape, dtype = _fallback_shape(mod, None if stats is None else stats.get(name)), mod.weight.dtype
                fallback.append(name)
            out.layers[name] = measure_layer(mod, shape, structure, dtype=dtype, timer=self.timer,
                                             rounds=self.rounds, min_seconds=self.min_seconds,
                                             memory_format=self.memory_format)
        if fallback:
            out.notes.append(f"{len(fallback)} layer(s) timed at a fallback input shape (no example input given)")
        if self.model_seconds is not None:
            layer_dense = sum(out.layers[n].dense for n, _ in selected)
            out.rest_seconds = max(0.0, float(self.model_seconds) - layer_dense)
        else:
            out.notes.append("the rest of the model is not timed: the target applies to the compressed layers")
        return out


def _fallback_shape(mod: nn.Module, st: Any) -> tuple[int, ...]:
    if isinstance(mod, nn.Conv2d):
        hw = getattr(st, "in_hw", None) or (32, 32)
        return (FALLBACK_IMAGES, mod.in_channels, int(hw[0]), int(hw[1]))
    rows = FALLBACK_ROWS
    count = getattr(st, "count", 0) or 0
    if count:
        rows = max(1, min(FALLBACK_ROWS, int(count)))
    return (rows, int(mod.weight.shape[1]))
