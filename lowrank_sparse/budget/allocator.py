"""allocate(): from one network-wide target to every layer's rank, density and slices.

Steps: check the arguments; classify the layers into fixed ones (overrides, excluded,
first / last under ``keep_first_last``) and free ones; check that the fixed parts fit
the target; build each free layer's error curves (:mod:`.curves`); search them with
the chosen method (:mod:`.alds`, :mod:`.enc`, :mod:`.uniform`); assemble the per-layer
result (with the real solver's rank / sparse split when ``error_fn`` is given).
"""

from __future__ import annotations

import fnmatch
import math
import time
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from .._renamed import warn_renamed
from ..errors import InfeasibleBudget
from ..calibrate.layers import first_last_protected
from ..structure import Structure, parse_structure
from .alds import alds_search
from . import tradeoff
from .curves import Configs, ErrorFn, LayerCurves, _config_error, build_curves, candidate_configs, config_error
from .spectra import CurveCache
from .enc import enc_search
from .latency import LatencyModel
from .spec import Allocation, Budget, LayerAllocation, LayerSpec, lowrank_params, sparse_nnz
from .uniform import uniform_search

__all__ = ["METHODS", "MODES", "Override", "allocate"]

#: Allocation methods: name -> search over the layers' curves.
METHODS = {"alds": alds_search, "enc": enc_search, "uniform": uniform_search}
#: What a layer may become: both parts, or one of them.
MODES = ("lowrank_sparse", "rank_only", "sparse_only")

Override = Union[str, Mapping[str, Any], tuple]


def allocate(
    layers: Sequence[LayerSpec],
    target: Budget,
    method: str = "alds",
    *,
    total_params: Optional[int] = None,
    total_macs: Optional[int] = None,
    mode: str = "lowrank_sparse",
    structure: Union[str, Structure] = "unstructured",
    error_fn: Optional[ErrorFn] = None,
    exclude: Sequence[str] = (),
    overrides: Optional[Mapping[str, Override]] = None,
    keep_first_last: bool = True,
    slice_candidates: Sequence[int] = (1, 2, 4, 8),
    slice_linear: bool = False,
    sparse_shares: Sequence[float] = (0.0, 0.1, 0.25, 0.5),
    cache: Optional[CurveCache] = None,
    seed: int = 0,
    total_flops: Optional[int] = None,
    latency: Optional[LatencyModel] = None,
) -> Allocation:
    """Choose every layer's rank, density and slice count to meet a network-wide target.

    Args:
        layers: the compressible layers, in network order.
        target: Budget(params=..., macs=...) as fractions of the WHOLE model
            (``target.scope == "layers"``: of the listed layers' weights, and
            ``total_params`` / ``total_macs`` are ignored).
        method: "alds" | "enc" | "uniform".
        total_params: all parameters of the model (including layers not listed, biases,
            BN); default: the listed layers' weights only.
        total_macs: the model's MACs per sample (same convention as
            :func:`spec.layer_macs`); default: the listed layers' MACs only.
        mode: "lowrank_sparse" (per-layer split from ``sparse_shares``, with rank only
            and S alone among each layer's candidates, so its allocation is never worse
            on the proxy than either part's), "rank_only", "sparse_only".
        structure: sparsity structure of S (see lowrank_sparse.structure); conv layers use
            their own ``block`` for "channel".
        error_fn: error_fn(layer, rank, density) -> relative error of the real L+S solver;
            used in "lowrank_sparse" mode to choose each layer's split at its allocated
            size (the sizes themselves come from the cheap proxy curves).  If it has a
            ``prefetch(requests)`` method, all the splits it will be asked about are
            given to it first, as [(layer, rank, density)], so that it can solve them
            in parallel.
        exclude: fnmatch patterns of layers kept dense.
        overrides: {pattern: "dense" | {"rank": r, "density": d, "slices": g} | (r, d)}
            fixing a layer's configuration (first matching pattern wins; beats exclude).
        keep_first_last: keep the first and last layer dense, by the rule of
            :func:`lowrank_sparse.calibrate.first_last_protected` (only when there are
            at least 3 layers).
        slice_candidates: ALDS slice counts (used by "alds" only; others use 1).
        slice_linear: also try slices > 1 on linear layers (off by default: each extra
            slice count costs another spectrum of the layer, which dominates the time at
            VGG's 4096x25088 classifier).
        sparse_shares: candidate fractions of a layer's budget given to S ("lowrank_sparse").
        cache: reuse singular values across calls (see CurveCache).
        seed: seed of the sampled estimates in the curves.
        total_flops: deprecated alias of ``total_macs`` (the same value).
        latency: per-layer latency tables (:class:`~lowrank_sparse.budget.latency.LatencyModel`
            with a table for every listed layer), needed by ``target.latency`` (default:
            ``target.latency_model``); each candidate then also costs its predicted
            seconds (the faster exact form), and the listed layers' predicted seconds plus
            ``latency.rest_seconds`` must stay within ``target.latency`` times the same sum
            for the dense model.  With a latency target every candidate of a layer is
            searched, not only each size's most accurate one (:mod:`.tradeoff`:
            frontiers by size and seconds weighted together, over all candidates, rank
            only and S only; the best result by the method's objective that meets every
            budget is kept, recorded in ``info["tradeoff"]``).  Given without a latency
            target, the result only reports predicted seconds.

    The result never exceeds the budget; it undershoots by at most a few rank steps.

    Raises:
        ValueError: bad arguments, or an infeasible target (the message says by how much).
    """
    t0 = time.perf_counter()
    total_macs = _renamed_total(total_macs, total_flops)  # called from here: its warning's stacklevel counts on it
    layers, shares = _checked(layers, target, method, mode, sparse_shares)
    if isinstance(exclude, str):
        exclude = (exclude,)
    overrides = dict(overrides or {})
    st_name = structure if isinstance(structure, str) else structure.name
    parse_structure(structure)  # validate early
    cache = cache if cache is not None else CurveCache()
    if target.scope == "layers":  # fractions of the listed layers' weights: the rest is neither counted nor charged
        total_params = total_macs = None
    totals = _totals(layers, total_params, total_macs)
    dense_p, dense_m, total_params, total_macs = totals
    latency = _latency_of(target, latency, layers)
    split_fn = error_fn if mode == "lowrank_sparse" else None
    fixed, free = _classify(layers, structure, overrides, exclude, keep_first_last, split_fn, cache)
    lim = _fixed_limits(target, layers, fixed, latency, totals)

    t1 = time.perf_counter()
    gs = tuple(slice_candidates) if method == "alds" else (1,)
    if lim.bl is None:
        curves = _free_curves(layers, free, mode, structure, gs, slice_linear, shares, cache, seed)
        t2 = time.perf_counter()
        idx, info = _search(method, curves, lim, total_params, total_macs)
        lat_cols = None
    else:
        cfgs = _free_configs(layers, free, mode, structure, gs, slice_linear, shares, cache, seed)
        t2 = time.perf_counter()
        curves, lat_cols, idx, info = _latency_search(method, layers, free, cfgs, mode, latency, lim,
                                                      total_params, total_macs)
    t3 = time.perf_counter()

    caps = None if lat_cols is None else [float(col[i]) for col, i in zip(lat_cols, idx)]
    out = _assemble(layers, fixed, free, curves, idx, structure, shares, split_fn, cache,
                    latency if lim.bl is not None else None, caps)
    p = total_params - dense_p + sum(a.params for a in out)
    macs = total_macs - dense_m + sum(a.macs for a in out)
    seconds = _seconds_after(out, latency, info)
    if split_fn is not None and method == "enc":
        info["metric_after_split"] = float(np.prod([1.0 - a.predicted_error**2 for a in out]))
    info.update({"seconds_curves": t2 - t1, "seconds_search": t3 - t2, "seconds_total": time.perf_counter() - t0,
                 "cache_hits": cache.hits, "cache_misses": cache.misses})
    return Allocation(out, method, mode, st_name, target, total_params, total_macs, p, macs, info,
                      dense_seconds=lim.dense_s, seconds=seconds)


class _Limits(NamedTuple):
    """The targets in absolute units and what the fixed parts (everything outside the
    free layers) already use: params as stored values, MACs per sample, seconds per
    forward.  A budget is None without that target; the seconds are None without a
    latency model."""

    bp: Optional[float]  # params budget
    bm: Optional[float]  # MACs budget
    bl: Optional[float]  # latency budget (s)
    fixed_p: int
    fixed_m: int
    fixed_s: Optional[float]
    dense_s: Optional[float]  # the dense model's predicted seconds


def _fixed_limits(target: Budget, layers: list[LayerSpec], fixed: dict[int, LayerAllocation],
                  latency: Optional[LatencyModel], totals: tuple[int, int, int, int]) -> _Limits:
    """The targets and the fixed parts' use of them (``totals`` as from :func:`_totals`);
    raises when the fixed parts alone exceed a target."""
    dense_p, dense_m, total_params, total_macs = totals
    fixed_p = total_params - dense_p + sum(a.params for a in fixed.values())
    fixed_m = total_macs - dense_m + sum(a.macs for a in fixed.values())
    bp = None if target.params is None else target.params * total_params
    bm = None if target.macs is None else target.macs * total_macs
    _check_fixed_fit((("params", bp, fixed_p, total_params), ("macs", bm, fixed_m, total_macs)))
    dense_s, fixed_s, bl = _fixed_seconds(target, layers, fixed, latency)
    return _Limits(bp, bm, bl, fixed_p, fixed_m, fixed_s, dense_s)


def _fixed_seconds(target: Budget, layers: list[LayerSpec], fixed: dict[int, LayerAllocation],
                   latency: Optional[LatencyModel]) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(dense model's predicted seconds, the fixed parts' seconds, latency budget in
    seconds); all None without a latency model, the budget None without a latency
    target.  Fills the fixed layers' seconds; raises when they alone exceed the target."""
    if latency is None:
        return None, None, None
    for a in fixed.values():
        _set_seconds(a, latency)
    dense_s = latency.rest_seconds + sum(latency[l.name].dense for l in layers)
    fixed_s = latency.rest_seconds + sum(a.seconds for a in fixed.values())
    bl = None
    if target.latency is not None:
        bl = target.latency * dense_s
        _check_fixed_latency(bl, fixed_s, dense_s)
    return dense_s, fixed_s, bl


def _free_curves(layers: list[LayerSpec], free: list[int], mode: str, structure: Union[str, Structure],
                 gs: tuple[int, ...], slice_linear: bool, shares: list[float], cache: CurveCache,
                 seed: int) -> list[LayerCurves]:
    """The free layers' error curves, in ``free`` order (slice counts ``gs``)."""
    curves = []
    for li in free:
        curves.append(_curves_of(layers[li], mode, structure, gs, slice_linear, shares, cache, seed))
        cache.release(layers[li])  # one layer's work arrays at a time
    return curves


def _free_configs(layers: list[LayerSpec], free: list[int], mode: str, structure: Union[str, Structure],
                  gs: tuple[int, ...], slice_linear: bool, shares: list[float], cache: CurveCache,
                  seed: int) -> list[Configs]:
    """The free layers' candidate configurations (all of them, before any frontier)."""
    out = []
    for li in free:
        l = layers[li]
        lgs = gs if (l.kind == "conv" or slice_linear) else (1,)
        out.append(candidate_configs(l, mode, parse_structure(structure, block=l.block), slice_candidates=lgs,
                                     sparse_shares=shares, cache=cache, seed=seed))
        cache.release(l)
    return out


def _search(method: str, curves: list[LayerCurves], lim: _Limits, total_params: int,
            total_macs: int) -> tuple[Sequence[int], dict[str, Any]]:
    """Run the method's search on what the fixed parts leave of each budget:
    (chosen entry of every curve, the method's info).  Raises when even the smallest
    entries do not fit."""
    avail_p = None if lim.bp is None else lim.bp - lim.fixed_p
    avail_m = None if lim.bm is None else lim.bm - lim.fixed_m
    _check_curves_fit(curves, ((avail_p, lim.fixed_p, total_params), (avail_m, lim.fixed_m, total_macs)))
    return METHODS[method](curves, avail_p, avail_m)


def _latency_search(method: str, layers: list[LayerSpec], free: list[int], cfgs: list[Configs], mode: str,
                    latency: LatencyModel, lim: _Limits, total_params: int, total_macs: int
                    ) -> tuple[list[LayerCurves], list[np.ndarray], list[int], dict[str, Any]]:
    """With a latency budget: the method's search over every size/latency trade-off
    family of frontiers (:mod:`.tradeoff`); (the winning family's curves and seconds
    columns, its chosen entries, info).  Raises when even the smallest or the fastest
    entries do not fit, or no family meets all budgets."""
    budgets = tradeoff.Budgets(None if lim.bp is None else lim.bp - lim.fixed_p,
                               None if lim.bm is None else lim.bm - lim.fixed_m, lim.bl - lim.fixed_s)
    free_layers = [layers[li] for li in free]
    times = [latency[l.name] for l in free_layers]
    fams = tradeoff.families(free_layers, cfgs, times, mode, budgets, [l.sensitivity for l in free_layers])
    # the first family: all candidates, by size when a size budget is set
    _check_curves_fit(fams[0].curves, ((budgets.params, lim.fixed_p, total_params),
                                       (budgets.macs, lim.fixed_m, total_macs)))
    fastest = [min(float(col.min()) for col in cols) for cols in zip(*(f.seconds for f in fams))]
    _check_curves_latency(fastest, budgets.seconds, lim.fixed_s, lim.dense_s)
    fam, idx, info = tradeoff.best_family(method, METHODS[method], fams, budgets)
    return fam.curves, fam.seconds, idx, info


def _seconds_after(out: list[LayerAllocation], latency: Optional[LatencyModel], info: dict[str, Any]) -> Optional[float]:
    """Predicted seconds per forward after compression (None without a latency model);
    fills the layers' seconds still missing and notes the rest's seconds in ``info``."""
    if latency is None:
        return None
    for a in out:
        if a.seconds is None:
            _set_seconds(a, latency)
    seconds = latency.rest_seconds + sum(a.seconds for a in out)
    info["rest_seconds"] = latency.rest_seconds
    if latency.notes:
        info["latency_notes"] = list(latency.notes)
    return seconds


def _latency_of(target: Budget, latency: Optional[LatencyModel], layers: list[LayerSpec]) -> Optional[LatencyModel]:
    """The latency model to use (argument, else the target's); raises when a latency
    target has none or a listed layer has no table."""
    latency = latency if latency is not None else target.latency_model
    if latency is None:
        if target.latency is not None:
            raise ValueError("a latency target needs per-layer latency tables: pass latency=LatencyModel(...) "
                             "(or Budget(latency=..., latency_model=...)); compress() builds them itself")
        return None
    if not isinstance(latency, LatencyModel):
        raise TypeError(f"latency must be a LatencyModel, got {type(latency).__name__}")
    missing = [l.name for l in layers if l.name not in latency]
    if missing:
        raise ValueError(f"the latency model has no table for layer(s) {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (bind it to the layers first)")
    return latency


def _set_seconds(a: LayerAllocation, latency: LatencyModel) -> None:
    """Fill a layer's predicted seconds and form from its table."""
    t = latency[a.name]
    if a.keep_dense:
        a.seconds, a.form = t.dense, "original"
    else:
        a.seconds, a.form = t.seconds(a.rank, a.density, a.slices), t.form(a.rank, a.density, a.slices)


def _check_fixed_latency(bl: float, fixed_s: float, dense_s: float) -> None:
    if fixed_s > bl:
        raise InfeasibleBudget(
            f"infeasible latency target {bl / dense_s:.4f}: the parts that are not allocated (the rest of the "
            f"model and the excluded/overridden/first-last layers) alone take {1e3 * fixed_s:.3f} ms = "
            f"{fixed_s / dense_s:.4f} of the dense model's predicted {1e3 * dense_s:.3f} ms",
            "latency", bl / dense_s, fixed_s / dense_s,
        )


def _check_curves_latency(fastest: list[float], avail: float, fixed_s: float, dense_s: float) -> None:
    """Raise when even the fastest candidate of every allocated layer (``fastest``, seconds)
    exceeds what the fixed parts leave of the latency budget."""
    need = sum(fastest)
    if need > avail:
        raise InfeasibleBudget(
            f"infeasible latency target {(avail + fixed_s) / dense_s:.4f}: even the fastest configuration of every "
            f"allocated layer gives {(need + fixed_s) / dense_s:.4f} of the dense model's predicted time "
            f"({1e3 * (need + fixed_s):.3f} ms of {1e3 * dense_s:.3f} ms)",
            "latency", (avail + fixed_s) / dense_s, (need + fixed_s) / dense_s,
        )


def _renamed_total(total_macs: Optional[int], total_flops: Optional[int]) -> Optional[int]:
    """``total_macs``, or the deprecated ``total_flops`` given for it (with a warning)."""
    if total_flops is None:
        return total_macs
    if total_macs is not None:
        raise TypeError("allocate() got both total_macs= and its deprecated alias total_flops=")
    warn_renamed("allocate(total_flops=...)", "allocate(total_macs=...)", stacklevel=4)
    return total_flops


def _checked(layers: Sequence[LayerSpec], target: Budget, method: str, mode: str,
             sparse_shares: Sequence[float]) -> tuple[list[LayerSpec], list[float]]:
    """The layers as a list and the sorted distinct sparse shares; raises on bad arguments."""
    if not isinstance(target, Budget):
        raise TypeError(f"target must be a Budget, got {type(target).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layers = list(layers)
    for l in layers:
        if not isinstance(l, LayerSpec):
            raise TypeError(f"layers must be LayerSpec objects, got {type(l).__name__}")
    names = [l.name for l in layers]
    if len(set(names)) != len(names):
        raise ValueError("layer names must be unique")
    shares = sorted({float(s) for s in sparse_shares})
    if any(not (0.0 <= s < 1.0) for s in shares):
        raise ValueError(f"sparse_shares must lie in [0, 1), got {list(sparse_shares)}")
    if mode == "lowrank_sparse" and not shares:
        raise ValueError("sparse_shares must not be empty")
    return layers, shares


def _totals(layers: list[LayerSpec], total_params: Optional[int],
            total_macs: Optional[int]) -> tuple[int, int, int, int]:
    """(listed layers' dense params, their dense MACs, model params, model MACs)."""
    dense_p = sum(l.dense_params for l in layers)
    dense_m = sum(l.dense_macs for l in layers)
    total_params = dense_p if total_params is None else int(total_params)
    total_macs = dense_m if total_macs is None else int(total_macs)
    if total_params < dense_p:
        raise ValueError(f"total_params={total_params} is smaller than the listed layers' weights ({dense_p})")
    if total_macs < dense_m:
        raise ValueError(f"total_macs={total_macs} is smaller than the listed layers' MACs ({dense_m})")
    return dense_p, dense_m, total_params, total_macs


def _parse_override(name: str, pat: str, ov: Override) -> Optional[tuple[int, float, int]]:
    """-> (rank, density, slices) or None for "dense"."""
    if isinstance(ov, str):
        if ov == "dense":
            return None
        raise ValueError(f"override {pat!r} for layer {name!r}: unknown value {ov!r} (use 'dense', a dict or (rank, density))")
    if isinstance(ov, tuple):
        if len(ov) not in (2, 3):
            raise ValueError(f"override {pat!r}: tuple must be (rank, density) or (rank, density, slices)")
        ov = dict(zip(("rank", "density", "slices"), ov))
    if not isinstance(ov, Mapping):
        raise TypeError(f"override {pat!r}: expected 'dense', a dict or a tuple, got {type(ov).__name__}")
    bad = set(ov) - {"rank", "density", "slices"}
    if bad:
        raise ValueError(f"override {pat!r}: unknown keys {sorted(bad)} (allowed: rank, density, slices)")
    r, d, g = int(ov.get("rank", 0)), float(ov.get("density", 0.0)), int(ov.get("slices", 1))
    if r < 0 or not (0.0 <= d <= 1.0) or g < 1:
        raise ValueError(f"override {pat!r} for {name!r}: need rank >= 0, 0 <= density <= 1, slices >= 1")
    if r == 0 and d == 0.0:
        raise ValueError(f"override {pat!r} for {name!r}: rank 0 and density 0 would delete the layer")
    return r, d, g


def _override_alloc(l: LayerSpec, pat: str, ov: Override, st: Structure, cache: CurveCache,
                    error_fn: Optional[ErrorFn]) -> LayerAllocation:
    cfg = _parse_override(l.name, pat, ov)
    if cfg is None:
        return _dense_alloc(l, "override")
    r, d, g = cfg
    if l.in_channels % g != 0:
        raise ValueError(f"override for {l.name!r}: slices={g} must divide in_channels={l.in_channels}")
    return _alloc(l, r, d, g, st, config_error(l, r, d, g, st, cache, error_fn), "override")


def _classify(layers: list[LayerSpec], structure: Union[str, Structure], overrides: dict[str, Override],
              exclude: Sequence[str], keep_first_last: bool, error_fn: Optional[ErrorFn],
              cache: CurveCache) -> tuple[dict[int, LayerAllocation], list[int]]:
    """({index: fixed allocation}, indices of the free layers), in network order.
    Overrides beat ``exclude``, which beats ``keep_first_last``."""
    protected = first_last_protected([l.name for l in layers], keep_first_last)
    fixed: dict[int, LayerAllocation] = {}
    free: list[int] = []
    for li, l in enumerate(layers):
        st = parse_structure(structure, block=l.block)
        st.check_shape(l.m, l.n)
        ov_hit = next((p for p in overrides if fnmatch.fnmatchcase(l.name, p)), None)
        if ov_hit is not None:
            fixed[li] = _override_alloc(l, ov_hit, overrides[ov_hit], st, cache, error_fn)
        elif any(fnmatch.fnmatchcase(l.name, p) for p in exclude):
            fixed[li] = _dense_alloc(l, "excluded")
        elif l.name in protected:
            fixed[li] = _dense_alloc(l, "first/last")
        else:
            free.append(li)
    return fixed, free


def _check_fixed_fit(checks: Sequence[tuple[str, Optional[float], int, int]]) -> None:
    """Raise if the parts that are not allocated alone exceed a target (what, budget, fixed, total)."""
    for what, b, fx, tot in checks:
        if b is not None and fx > b:
            raise InfeasibleBudget(
                f"infeasible {what} target {b / tot:.4f}: the parts that are not allocated (excluded/overridden/"
                f"first-last layers and everything outside the listed layers) alone need {fx:,} = "
                f"{fx / tot:.4f} of the model, exceeding the target by {fx - b:,.0f} ({(fx - b) / tot:.4f} of the model)",
                what, b / tot, fx / tot,
            )


def _curves_of(l: LayerSpec, mode: str, structure: Union[str, Structure], gs: tuple[int, ...],
               slice_linear: bool, shares: list[float], cache: CurveCache, seed: int) -> LayerCurves:
    lgs = gs if (l.kind == "conv" or slice_linear) else (1,)
    c = build_curves(l, mode, parse_structure(structure, block=l.block), slice_candidates=lgs,
                     sparse_shares=shares, cache=cache, seed=seed)
    return c.weighted(l.sensitivity)  # compared across layers weighted; _assemble reports them unweighted


def _check_curves_fit(curves: list[LayerCurves], checks: Sequence[tuple[Optional[float], int, int]]) -> None:
    """Raise if even the smallest configuration of every free layer exceeds a target;
    ``checks`` = ((available params, fixed params, total params), (same for MACs))."""
    costs = (("params", lambda c: int(c.sizes.min())), ("macs", lambda c: int(c.sizes.min()) * c.spatial))
    for (what, costf), (b, fx, tot) in zip(costs, checks):
        if b is None:
            continue
        need = sum(costf(c) for c in curves)
        if need > b:
            raise InfeasibleBudget(
                f"infeasible {what} target {(b + fx) / tot:.4f}: even the smallest configuration of every allocated "
                f"layer gives {(need + fx) / tot:.4f} of the model, exceeding the target by {need - b:,.0f} "
                f"({(need - b) / tot:.4f} of the model)",
                what, (b + fx) / tot, (need + fx) / tot,
            )


def _assemble(layers: list[LayerSpec], fixed: dict[int, LayerAllocation], free: list[int],
              curves: list[LayerCurves], idx: Sequence[int], structure: Union[str, Structure],
              shares: list[float], split_fn: Optional[ErrorFn], cache: CurveCache,
              latency: Optional[LatencyModel] = None, caps: Optional[list[float]] = None) -> list[LayerAllocation]:
    """Per-layer result in network order; ``split_fn`` (the real solver's error) picks
    the rank / sparse split of unsliced free layers at their allocated size (with a
    latency budget only among splits predicted no slower than the allocated entry's
    cost ``caps``; none: the allocated entry itself)."""
    if split_fn is not None:
        _prefetch_splits(layers, free, curves, idx, structure, shares, split_fn, latency, caps)
    out: list[LayerAllocation] = []
    ci = {li: k for k, li in enumerate(free)}
    for li, l in enumerate(layers):
        if li in fixed:
            out.append(fixed[li])
            continue
        c, i = curves[ci[li]], idx[ci[li]]
        st = parse_structure(structure, block=l.block)
        if bool(c.dense[i]):
            out.append(_dense_alloc(l, "allocated"))
            continue
        r, g, nnz = int(c.ranks[i]), int(c.slices[i]), int(c.nnz[i])
        err = float(c.errors[i]) / l.sensitivity
        dens = nnz / (l.m * l.n)
        if split_fn is not None and g == 1:
            cap = None if caps is None else (latency[l.name], caps[ci[li]])
            own = None if caps is None else (r, dens)
            best = _best_split(l, int(c.sizes[i]), st, shares, split_fn, cache, cap, own)
            if best is not None:
                r, dens, err = best
        out.append(_alloc(l, r, dens, g, st, err, "allocated"))
    return out


def _dense_alloc(l: LayerSpec, source: str) -> LayerAllocation:
    return LayerAllocation(l.name, 0, 0.0, 1, l.dense_params, l.dense_macs, 0.0, l.kind, (l.m, l.n),
                           keep_dense=True, nnz=0, source=source)


def _alloc(l: LayerSpec, r: int, d: float, g: int, st: Structure, err: float, source: str) -> LayerAllocation:
    nnz = sparse_nnz(l.m, l.n, d, st)
    if nnz == 0:
        d = 0.0
    params = lowrank_params(l.m, l.n, r, g) + nnz
    return LayerAllocation(l.name, int(r), float(d), int(g), params, params * l.spatial, float(err), l.kind,
                           (l.m, l.n), keep_dense=False, nnz=nnz, source=source)


def _split_candidate(l: LayerSpec, sh: float, size: int, st: Structure) -> Optional[tuple[int, float]]:
    """(rank, density) of sparse share ``sh`` of ``size`` stored values, or None if it does not fit."""
    m, n, mn = l.m, l.n, l.m * l.n
    if sh == 0.0:
        r = size // (m + n)
        return (r, 0.0) if r >= 1 else None
    if st.kind == "nm":
        nnz, d = mn * st.n // st.m, st.n / st.m
    else:
        gsz = st.group_size(m, n)
        k = int(math.floor(sh * size / gsz))
        nnz, d = k * gsz, k * gsz / mn
    r = (size - nnz) // (m + n)
    return None if (nnz == 0 or r < 1) else (r, d)


def _sparse_only_candidate(l: LayerSpec, size: int, st: Structure) -> Optional[tuple[int, float]]:
    """(0, density) of the largest sparse-only S within ``size`` stored values, or None."""
    mn = l.m * l.n
    if st.kind == "nm":
        nnz = mn * st.n // st.m
        return (0, st.n / st.m) if nnz <= size else None
    gsz = st.group_size(l.m, l.n)
    k = min(size // gsz, st.num_groups(l.m, l.n))
    return (0, k * gsz / mn) if k >= 1 else None


def _split_candidates(l: LayerSpec, size: int, st: Structure, shares: Sequence[float],
                      cap: Optional[tuple[Any, float]] = None,
                      own: Optional[tuple[int, float]] = None) -> list[tuple[float, int, float]]:
    """(share, rank, density) of every candidate split of ``size`` stored values that
    fits (and, with ``cap`` = (layer times, seconds), is predicted no slower than that):
    rank only (share 0), each L + S share, and S alone (share ``inf``, rank 0); ``own``,
    the allocated entry's (rank, density), comes first (share nan) and always counts."""
    out = [] if own is None else [(math.nan, int(own[0]), float(own[1]))]
    for sh in ([0.0] + [s for s in shares if s > 0.0] if st.kind != "nm" else [0.0, 1.0]) + [math.inf]:
        rd = _sparse_only_candidate(l, size, st) if sh == math.inf else _split_candidate(l, sh, size, st)
        if rd is None:
            continue
        if cap is not None and cap[0].seconds(int(rd[0]), float(rd[1])) > cap[1] * (1 + 1e-12):
            continue
        if own is not None and (int(rd[0]), float(rd[1])) == (int(own[0]), float(own[1])):
            continue
        out.append((sh, int(rd[0]), float(rd[1])))
    return out


def _prefetch_splits(layers: list[LayerSpec], free: list[int], curves: list[LayerCurves], idx: Sequence[int],
                     structure: Union[str, Structure], shares: list[float], split_fn: ErrorFn,
                     latency: Optional[LatencyModel] = None, caps: Optional[list[float]] = None) -> None:
    """Hand every split that :func:`_best_split` will ask ``split_fn`` about to its
    ``prefetch(requests)`` at once (an error function backed by a parallel executor
    solves them concurrently); ``requests`` = [(layer, rank, density)] in the order the
    calls follow.  Error functions without ``prefetch`` are called one at a time."""
    prefetch = getattr(split_fn, "prefetch", None)
    if prefetch is None:
        return
    requests = []
    for k, li in enumerate(free):
        c, i, l = curves[k], idx[k], layers[li]
        if bool(c.dense[i]) or int(c.slices[i]) != 1:
            continue
        st = parse_structure(structure, block=l.block)
        cap = own = None
        if caps is not None:
            cap, own = (latency[l.name], caps[k]), (int(c.ranks[i]), int(c.nnz[i]) / (l.m * l.n))
        requests += [(l, r, d) for _, r, d in _split_candidates(l, int(c.sizes[i]), st, shares, cap, own) if d > 0.0]
    prefetch(requests)


def _best_split(l: LayerSpec, size: int, st: Structure, shares: Sequence[float], error_fn: ErrorFn,
                cache: CurveCache, cap: Optional[tuple[Any, float]] = None,
                own: Optional[tuple[int, float]] = None) -> Optional[tuple[int, float, float]]:
    """Among the candidate sparse shares, the (rank, density) of size <= ``size`` with the
    lowest error (error_fn with an S, exact spectrum for rank only); ties -> the allocated
    entry ``own`` if given, then the smaller share.  With a latency ``cap`` only the splits
    within it (``own`` always); None when none is."""
    best: Optional[tuple[float, int, float]] = None
    for _, r, d in _split_candidates(l, size, st, shares, cap, own):
        if d == 0.0:
            err = _config_error(l, r, 0.0, 1, st, cache, None)  # exact rank-only error, scaled
        else:
            err = float(error_fn(l, int(r), float(d)))
            if not math.isfinite(err):
                raise ValueError(f"error_fn returned a non-finite error for layer {l.name!r}")
        if best is None or err < best[0] - 1e-12:
            best = (err, int(r), float(d))
    if best is None:
        if cap is not None:
            return None
        raise ValueError(f"layer {l.name!r}: no rank/sparse split fits its allocated size {size}")
    return best[1], best[2], best[0]
