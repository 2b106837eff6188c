"""Per-layer sizes: (rank, density, slices) for every selected layer, either explicit
or from a network-wide budget.

Explicit sizes (``target=None``):

* ``rank``: None (no low-rank part), an int (that rank, capped at full rank), a
  float in [0, 1] (that fraction of full rank min(m, n), rounded), or a dict
  {fnmatch pattern: int | float}; the first matching pattern wins.
* ``density``: None (no sparse part), a float in [0, 1] (fraction of the weight's
  entries S may keep), or a dict {pattern: float}.
* A layer gets no change (status "untouched") when its rank is full, its density is
  1, or (dicts) no pattern matches it.

With a :class:`~lowrank_sparse.budget.Budget` the sizes come from
:func:`lowrank_sparse.budget.allocate` over exactly the selected layers (everything
else counts as fixed in the model's totals).  For methods with ``solver_split`` the
allocator's ``error_fn`` runs the real solver on the layer; the lowest-error
decomposition of each layer (the one the allocator picks among a layer's splits, all
asked at the layer's final size) is kept for reuse by the final solve, so at most one
decomposition per layer is held at a time.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Mapping, NamedTuple, Optional

import torch
import torch.nn as nn

from ..calibrate import LayerStats, folded_problem, unfold_decomposition
from ..solve.activations import act_fn
from ..structure import Structure
from . import methods
from .configs import DensitySpec, MethodConfig, RankSpec
from .errors import dense_error
from .tasks import solve_task

__all__ = ["LayerSize", "Solved", "allocation_plan", "check_plan", "explicit_plan", "latency_model", "layer_specs"]

#: Largest weight (entries) whose allocator-time decompositions are kept for reuse.
REUSE_MAX_ENTRIES = 1 << 22


class LayerSize(NamedTuple):
    """The size a layer is compressed to (rank per slice, density of S, ALDS slices)."""

    rank: int
    density: float
    slices: int = 1


#: Decompositions the allocator ran: (name, rank, density) -> Decomposition (unfolded).
Solved = dict[tuple[str, int, float], Any]


def _lookup(spec: Any, name: str) -> tuple[bool, Any]:
    """(matched, value) of a scalar-or-dict spec for layer ``name``."""
    if isinstance(spec, Mapping):
        for pat, val in spec.items():
            if not isinstance(pat, str):
                raise TypeError(f"rank / density dict keys must be name patterns (str), got {pat!r}")
            if fnmatch.fnmatchcase(name, pat):
                return True, val
        return False, None
    return True, spec


def _resolve_rank(value: Any, m: int, n: int, name: str) -> int:
    full = min(m, n)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"layer '{name}': rank must be an int, a fraction in [0, 1] or None, got {value!r}")
    if isinstance(value, float):
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ValueError(f"layer '{name}': a float rank is a fraction of full rank in [0, 1], got {value}")
        return int(round(value * full))
    if value < 0:
        raise ValueError(f"layer '{name}': rank must be >= 0, got {value}")
    return min(int(value), full)


def _resolve_density(value: Any, name: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"layer '{name}': density must be a float in [0, 1] or None, got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"layer '{name}': density must be in [0, 1], got {value}")
    return value


def explicit_plan(names: list[str], stats: dict[str, LayerStats], rank: RankSpec,
                  density: DensitySpec) -> dict[str, LayerSize]:
    """Sizes from explicit ``rank`` / ``density`` specs (see the module doc)."""
    plan: dict[str, LayerSize] = {}
    dicts = isinstance(rank, Mapping) or isinstance(density, Mapping)
    for name in names:
        m, n = stats[name].weight_shape
        hit_r, rv = _lookup(rank, name)
        hit_d, dv = _lookup(density, name)
        if dicts and not (hit_r and rv is not None) and not (hit_d and dv is not None):
            plan[name] = LayerSize(min(m, n), 0.0, 1)  # no pattern matched: untouched
            continue
        plan[name] = LayerSize(_resolve_rank(rv if hit_r else None, m, n, name),
                               _resolve_density(dv if hit_d else None, name), 1)
    return plan


def check_plan(plan: dict[str, LayerSize]) -> None:
    """Raise for a layer whose size would delete its weight (rank 0 and density 0)."""
    for name, size in plan.items():
        if size.rank == 0 and size.density == 0.0:
            raise ValueError(f"layer '{name}': rank 0 and density 0 would delete the layer's weight; "
                             f"give it a rank or a density, or exclude it")


def layer_specs(selected: list[tuple[str, nn.Module]], stats: dict[str, LayerStats],
                sensitivity: Optional[dict[str, float]] = None) -> list[Any]:
    """The allocator's LayerSpecs: the weight the solver fits (BatchNorm folded by
    :func:`~lowrank_sparse.calibrate.folded_problem`), its Gram matrix, the scale
    that maps predicted errors to errors after the activation, and the layer's
    end-to-end ``sensitivity`` (1 where not given)."""
    from .. import budget as B

    specs = []
    for name, mod in selected:
        st = stats[name]
        prob = folded_problem(st, mod)
        scale = 1.0
        info = st.activation
        if info.nonlinear and st.sample is not None:  # predicted errors after the activation
            scale = B.activation_error_scale(prob.weight, prob.bias, st.sample,
                                             lambda u, i=info: act_fn(u, i.name, i.negative_slope))
        specs.append(B.LayerSpec(name=name, weight=prob.weight, kind=st.kind, block=st.block,
                                 out_hw=st.out_hw, gram=st.gram, error_scale=scale,
                                 sensitivity=(sensitivity or {}).get(name, 1.0)))
    return specs


class _SolverErrors:
    """error_fn(layer, rank, density): post-activation error of the real solver's fit.

    :meth:`prefetch` runs a batch of such solves as tasks on ``executor`` (when it runs
    more than one at a time) and keeps their errors.  Of each layer in ``reusable``
    (small enough, and fitted on these statistics by the final solve) the decomposition
    with the lowest error so far is kept in ``solved`` for reuse, the one it replaces
    dropped: one decomposition per layer at most.
    """

    def __init__(self, config: MethodConfig, structure: Structure, selected: list[tuple[str, nn.Module]],
                 stats: dict[str, LayerStats], solved: Solved, executor: Any, reusable: set[str]) -> None:
        self.config, self.structure, self.mods, self.stats = config, structure, dict(selected), stats
        self.solved, self.executor, self.reusable = solved, executor, reusable
        self.errors: dict[tuple[str, int, float], float] = {}
        self.kept: dict[str, tuple[str, int, float]] = {}

    def _task(self, name: str, rank: int, density: float) -> tuple[Any, Any, Any, Any]:
        """The payload of :func:`.tasks.solve_task` for one probe."""
        prob = folded_problem(self.stats[name], self.mods[name])
        problem = methods.layer_problem(prob.weight, prob.bias, self.stats[name], int(rank), float(density), 1,
                                        self.structure)
        return methods.method_of_config(self.config), self.config, problem, prob.scale

    def _record(self, key: tuple[str, int, float], dec: Any) -> float:
        name = key[0]
        st, mod = self.stats[name], self.mods[name]
        W0 = mod.weight.detach().reshape(st.weight_shape)
        b0 = None if mod.bias is None else mod.bias.detach()
        self.errors[key] = err = dense_error(st, W0, b0, torch.as_tensor(dec.dense()).to(W0), b0)
        old = self.kept.get(name)
        if name in self.reusable and (old is None or err < self.errors[old] - 1e-12):  # the allocator's tie rule
            self.solved.pop(old, None)
            self.solved[key], self.kept[name] = dec, key
        return err

    def prefetch(self, requests: list[tuple[Any, int, float]]) -> None:
        """Solve every (layer, rank, density) of ``requests`` on the executor at once."""
        ex = self.executor
        if ex is None or ex.max_in_flight <= 1:
            return
        todo = list(dict.fromkeys((getattr(l, "name", l), int(r), float(d)) for l, r, d in requests))
        todo = [k for k in todo if k not in self.errors]
        while todo or ex.pending():
            while todo and ex.pending() < ex.max_in_flight:
                key = todo.pop(0)
                ex.submit(key, solve_task, self._task(*key))
            key, (dec, _) = ex.next_done()
            self._record(key, dec)

    def __call__(self, layer: Any, rank: int, density: float) -> float:
        key = (getattr(layer, "name", layer), int(rank), float(density))
        if key not in self.errors:
            method, config, problem, scale = self._task(*key)
            self._record(key, unfold_decomposition(methods.solve_layer(config, problem), scale))
        return self.errors[key]


def latency_model(target: Any, selected: list[tuple[str, nn.Module]], stats: dict[str, LayerStats],
                  structure: Structure) -> Any:
    """For a latency target: the target's :class:`~lowrank_sparse.budget.latency.LatencyModel`
    (or a new one: layers timed at fallback input shapes, rest not timed) bound to the
    selected layers with the run's structure, every layer's table measured now
    (cached per shape); None for other targets."""
    if getattr(target, "latency", None) is None:
        return None
    from ..budget.latency import LatencyModel

    base = target.latency_model if target.latency_model is not None else LatencyModel()
    return base.bind(selected, stats, structure)


def _prediction(alloc: Any) -> dict[str, Any]:
    """What the allocator predicted for a latency budget (seconds, ratio, per-layer form)."""
    return {"target": alloc.target.latency, "dense_seconds": alloc.dense_seconds, "seconds": alloc.seconds, "ratio": alloc.latency_ratio,
            "rest_seconds": alloc.info.get("rest_seconds", 0.0),
            "layers": {la.name: {"seconds": la.seconds, "form": la.form} for la in alloc.layers}}


def allocation_plan(
    target: Any,
    allocation: str,
    config: MethodConfig,
    structure: Structure,
    selected: list[tuple[str, nn.Module]],
    stats: dict[str, LayerStats],
    totals: tuple[int, int],
    solved: Solved,
    executor: Any = None,
    sequential: bool = False,
    sensitivity: Optional[dict[str, float]] = None,
) -> tuple[dict[str, LayerSize], Optional[str]]:
    """Sizes from :func:`lowrank_sparse.budget.allocate` over the selected layers, and
    its table.  ``totals`` = (model params, model MACs per sample).  Only the allocator's
    solves whose sizes the plan picked are left in ``solved`` (none of the layers that
    ``sequential`` calibration re-fits on new inputs, all but the first).  The allocator's solver
    probes run on ``executor`` (a started executor; None: in this process).  A latency
    target's layer tables are measured here (:func:`latency_model`); when the target
    carries its own LatencyModel, the prediction is left in its ``prediction``.
    ``sensitivity``: each layer's end-to-end weight (``Budget(weighting="sensitivity")``)."""
    from .. import budget as B

    method = methods.method_of_config(config)
    # layers whose final solve sees these statistics (under sequential only the first)
    fitted_here = selected[:1] if sequential else selected
    reusable = {n for n, m in fitted_here if m.weight.numel() <= REUSE_MAX_ENTRIES}
    error_fn = (_SolverErrors(config, structure, selected, stats, solved, executor, reusable) if method.solver_split
                else None)
    latency = latency_model(target, selected, stats, structure)
    alloc = B.allocate(layer_specs(selected, stats, sensitivity), target, method=allocation, total_params=totals[0],
                       total_macs=totals[1], mode=method.allocation_mode, structure=structure, error_fn=error_fn,
                       keep_first_last=False, seed=config.solver.seed, latency=latency)
    if latency is not None and target.latency_model is not None:
        target.latency_model.prediction = _prediction(alloc)
    plan: dict[str, LayerSize] = {}
    for la in alloc.layers:
        if la.keep_dense:
            plan[la.name] = LayerSize(min(stats[la.name].weight_shape), 0.0, 1)
        else:
            plan[la.name] = LayerSize(int(la.rank), float(la.density), int(la.slices))
    for key in [k for k in solved if tuple(plan.get(k[0], (None, None))[:2]) != k[1:]]:
        del solved[key]
    return plan, alloc.table()
