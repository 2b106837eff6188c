"""compress(): replace a trained model's layers by low-rank + sparse pairs.

Pipeline (one call of :func:`compress`):

1. ``new = copy.deepcopy(model)``: the input model is never modified.
2. Layer selection: every ``nn.Linear`` and ``nn.Conv2d`` with ``groups == 1``
   (:func:`lowrank_sparse.calibrate.find_layers`), filtered by ``include`` /
   ``exclude`` (fnmatch patterns on qualified names) and ``keep_first_last``.
3. Calibration (:func:`lowrank_sparse.calibrate.calibrate`): ONE pass of the
   calibration data through the (still uncompressed) copy collects every selected
   layer's input Gram matrix, mean and input subsample, and its activation.  All
   layers are therefore fitted to the inputs they see in the original network, as in
   Ma et al. (arXiv 1807.10119), where each layer is approximated independently.
   With ``sequential=True`` the statistics of each layer are instead re-collected
   from the partially compressed copy right before that layer is fitted (the layer
   then sees the inputs the compressed network will feed it; one calibration pass
   per layer, so slower).
4. Per-layer ranks / densities: from a :class:`~lowrank_sparse.budget.Budget` target
   through :func:`lowrank_sparse.budget.allocate` (``allocation`` = "alds" / "enc" /
   "uniform"), or explicit ``rank`` / ``density``.
5. Each layer: solve ``W ~ U V + S`` against the post-activation output on the
   calibration inputs (``lowrank_sparse.decompose`` / ``solve.baselines`` for the
   rank-only / sparse-only methods), build the pair module, swap it into the copy.
   A layer whose budget leaves it untouched (full rank, or density 1) keeps its
   original module.
6. Report: per-layer :class:`~lowrank_sparse.report.LayerReport` (counts from the
   modules themselves, output error measured in torch from the original weights and
   the new module) and whole-model totals.

Explicit ranks / densities (``target=None``):

* ``rank``: None (no low-rank part), an int (that rank, capped at full rank), a
  float in [0, 1] (that fraction of full rank min(m, n), rounded), or a dict
  {fnmatch pattern: int | float}; the first matching pattern wins.
* ``density``: None (no sparse part), a float in [0, 1] (fraction of the weight's
  entries S may keep), or a dict {pattern: float}.
* A layer gets no change (status "untouched") when its rank is full, its density is
  1, or (dicts) no pattern matches it.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn as nn

from .calibrate import (
    DEFAULT_SAMPLE_SIZE,
    CalibrationData,
    LayerStats,
    calibrate,
    find_layers,
    iter_batches,
    stats_error,
)
from .report import CompressionReport, LayerReport
from .structure import Structure, parse_structure

__all__ = ["compress", "output_error", "dense_error", "METHODS"]

METHODS = ("lowrank_sparse", "rank_only", "sparse_only")

#: Largest weight (entries) whose allocator-time decompositions are kept for reuse.
_REUSE_MAX_ENTRIES = 1 << 22

RankSpec = Union[None, int, float, Mapping[str, Union[int, float]]]
DensitySpec = Union[None, float, Mapping[str, float]]


# ---------------------------------------------------------------------------- helpers


def _match(name: str, patterns: Any) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


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


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _act(u: torch.Tensor, name: str, slope: float) -> torch.Tensor:
    """The activation, computed independently of the solver (plain torch)."""
    if name == "identity":
        return u
    if name == "relu":
        return torch.relu(u)
    if name == "leaky_relu":
        return torch.nn.functional.leaky_relu(u, slope)
    if name == "gelu":
        return torch.nn.functional.gelu(u)
    if name == "silu":
        return torch.nn.functional.silu(u)
    if name == "tanh":
        return torch.tanh(u)
    raise ValueError(f"unknown activation {name!r}")


def output_error(
    stats: LayerStats,
    original: nn.Module,
    new: nn.Module,
) -> tuple[float, str]:
    """Relative post-activation output error of ``new`` against ``original``.

    With an input subsample X (n, s) (layers followed by a nonlinear activation):
    ``||act(W X + b) - act(y'(X))||_F / ||act(W X + b)||_F`` in float64, where W, b are
    the original layer's (BatchNorm-folded) weight and bias and y'(X) the new module's
    output on the same columns (the module's own forward for linear layers; its
    dense weight times the patch matrix for convs), BatchNorm-folded the same way.
    Without a subsample (layers fitted as linear) the exact error over all N
    calibration columns from the Gram matrix and mean (:func:`stats_error`).

    Returns:
        (error, description of what it was measured on).
    """
    Wm = original.weight.detach().reshape(original.weight.shape[0], -1)
    b = None if original.bias is None else original.bias.detach()
    if isinstance(new, (nn.Linear, nn.Conv2d)):
        Wn = new.weight.detach().reshape(Wm.shape)
    else:
        Wn = new.to_dense_weight().detach().reshape(Wm.shape)
    bn = None if new.bias is None else new.bias.detach()
    forward = None
    if stats.kind == "linear" and not isinstance(new, nn.Linear):
        forward = new
    return _error(stats, Wm, b, Wn, bn, forward)


def dense_error(
    stats: LayerStats,
    W: torch.Tensor,
    b: Optional[torch.Tensor],
    W_new: torch.Tensor,
    b_new: Optional[torch.Tensor],
) -> float:
    """:func:`output_error` for dense (m, n) weights (original and approximation)."""
    return _error(stats, W, b, W_new, b_new, None)[0]


def _error(
    stats: LayerStats,
    Wm: torch.Tensor,
    b: Optional[torch.Tensor],
    Wn: torch.Tensor,
    bn: Optional[torch.Tensor],
    forward: Optional[nn.Module],
) -> tuple[float, str]:
    info = stats.activation
    if stats.sample is None:
        return stats_error(stats, Wm.cpu(), None if b is None else b.cpu(), Wn.cpu(),
                           None if bn is None else bn.cpu()), f"gram ({stats.count} columns)"
    f64 = torch.float64
    X = stats.sample.to(f64)  # (n, s)
    Wf, bf = stats.folded(Wm.cpu().to(f64), None if b is None else b.cpu().to(f64))
    y = Wf @ X
    if bf is not None:
        y = y + bf[:, None]
    if forward is not None:
        dev = next((p.device for p in forward.parameters()), torch.device("cpu"))
        dt = next((p.dtype for p in forward.parameters()), torch.float32)
        with torch.no_grad():
            y2 = forward(stats.sample.T.to(device=dev, dtype=dt)).T.to("cpu", f64)
    else:
        y2 = Wn.cpu().to(f64) @ X
        if bn is not None:
            y2 = y2 + bn.cpu().to(f64)[:, None]
    if stats.bn_scale is not None:
        y2 = stats.bn_scale.to(f64)[:, None] * y2 + stats.bn_shift.to(f64)[:, None]
    a = _act(y, info.name, info.negative_slope)
    a2 = _act(y2, info.name, info.negative_slope)
    den = float(torch.linalg.norm(a))
    err = float(torch.linalg.norm(a - a2)) / den if den > 0 else float(torch.linalg.norm(a - a2))
    return err, f"subsample ({X.shape[1]} columns)"


def _progress(iterable: Any, progress: Optional[bool], total: int) -> Any:
    show = progress if progress is not None else sys.stderr.isatty()
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc="compress", unit="layer", leave=False)


def _solve(
    method: str,
    W: torch.Tensor,
    rank: int,
    density: float,
    structure: Structure,
    stats: LayerStats,
    bias: Optional[torch.Tensor],
    slices: int,
    solver: dict[str, Any],
) -> Any:
    """Run the per-layer solver on the (BN-folded) weight matrix W (m, n)."""
    info = stats.activation
    act = info.name if info.nonlinear else None
    X = stats.sample.to(W.dtype) if (info.nonlinear and stats.sample is not None) else None
    gram = None if X is not None else stats.gram
    common: dict[str, Any] = dict(X=X, gram=gram, bias=bias, activation=act)
    if act == "leaky_relu":
        common["negative_slope"] = info.negative_slope
    if method == "lowrank_sparse":
        from .decomposition import decompose

        return decompose(W, rank, density, structure, block=stats.block, slices=slices, **common, **solver)
    from .solve import baselines

    if method == "rank_only":
        kw = dict(common, slices=slices, **solver)
        return baselines.rank_only(W, rank, **_baseline_kwargs(baselines.rank_only, kw))
    kw = dict(common, block=stats.block, **solver)
    return baselines.sparse_only(W, density, structure, **_baseline_kwargs(baselines.sparse_only, kw))


def _baseline_kwargs(fn: Callable[..., Any], solver: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``fn`` accepts (sparse_only has no solver iterations and
    no negative_slope: magnitude pruning with a least-squares refit)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(solver)
    return {k: v for k, v in solver.items() if k in params}


def _unfold_bn(dec: Any, stats: LayerStats, scale: Optional[torch.Tensor]) -> Any:
    """Undo the BatchNorm row scaling: the solver fitted diag(a) W, the layer stores W."""
    if scale is None:
        return dec
    inv = (1.0 / scale)
    U = dec.U * inv.to(dec.U.dtype)[:, None]
    S = dec.S * inv.to(dec.S.dtype)[:, None]
    return replace(dec, U=U, S=S)


def _bn_scale(stats: LayerStats) -> Optional[torch.Tensor]:
    """Per-row BN scale used for folding; exact zeros replaced by 1 (those channels'
    outputs are constant, any weight is as good)."""
    if stats.bn_scale is None:
        return None
    a = stats.bn_scale.clone()
    a[a == 0] = 1.0
    return a


def _folded_problem(
    stats: LayerStats, mod: nn.Module
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(W', b', a): the (m, n) weight and bias the solver fits (BatchNorm folded with
    zero scales replaced by 1, see :func:`_bn_scale`), and the scale used (or None)."""
    W0 = mod.weight.detach().reshape(stats.weight_shape)
    b0 = None if mod.bias is None else mod.bias.detach()
    a = _bn_scale(stats)
    if a is None:
        return W0, b0, None
    a_ = a.to(W0)
    bf = stats.bn_shift.to(W0) + (a_ * b0 if b0 is not None else 0)
    return W0 * a_[:, None], bf, a


# ---------------------------------------------------------------------------- compress


def compress(
    model: nn.Module,
    calibration_data: CalibrationData,
    target: Any = None,
    *,
    allocation: str = "alds",
    rank: RankSpec = None,
    density: DensitySpec = None,
    structure: Union[str, Structure] = "unstructured",
    method: str = "lowrank_sparse",
    include: Optional[Union[str, list[str]]] = None,
    exclude: Optional[Union[str, list[str]]] = None,
    keep_first_last: bool = True,
    backend: str = "auto",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    progress: Optional[bool] = None,
    device: Optional[Union[str, torch.device]] = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    batch_size: int = 128,
    sequential: bool = False,
    solver_options: Optional[dict[str, Any]] = None,
) -> tuple[nn.Module, CompressionReport]:
    """Compress a trained model: each selected layer's W becomes L + S.

    Args:
        model: the trained network; never modified (a deep copy is compressed).
        calibration_data: inputs that represent the data the model will see: a
            tensor (split in ``batch_size`` rows), a list of tensors or (x, y) tuples,
            or a DataLoader; only inputs are used.
        target: a :class:`lowrank_sparse.budget.Budget` (fractions of the whole
            model's parameters and/or FLOPs to keep); ``allocation`` then chooses each
            layer's rank / density.  None: use ``rank`` / ``density``.
        allocation: "alds", "enc" or "uniform" (with ``target``).
        rank, density: explicit per-layer sizes (see the module doc); used only
            without ``target``.
        structure: sparsity structure of S ("unstructured", "row", "column",
            "channel", "N:M").
        method: "lowrank_sparse" (the ADMM solver), "rank_only" or "sparse_only"
            (the baselines of :mod:`lowrank_sparse.solve.baselines`).
        include, exclude: fnmatch patterns (or lists) on qualified layer names; a
            layer is compressed if it matches ``include`` (when given) and not
            ``exclude``.
        keep_first_last: leave the first and the last compressible layer (module
            order) untouched; the usual choice, as they are small and sensitive.
        backend, max_iter, tol, seed: passed to the solver; ``seed`` also seeds the
            calibration subsample.
        progress: tqdm bar over layers (None: only when stderr is a terminal).
        device: where calibration and the solves run (default: the model's device);
            when given, the returned model is moved there (the input model is not).
        sample_size: input columns kept per layer for the activation-aware objective
            (see :mod:`lowrank_sparse.calibrate`).
        batch_size: rows per batch when ``calibration_data`` is a tensor.
        sequential: re-collect each layer's statistics from the partially compressed
            copy right before fitting it (see the module doc).
        solver_options: extra keyword arguments for the solver (e.g. ``relaxed``).

    Returns:
        (new_model, report).  ``new_model`` has the training flags of ``model``.

    Raises:
        ValueError: bad arguments, a model without compressible layers, empty or
            ill-shaped calibration data, NaN/Inf activations (naming the layer).
        TypeError: wrong argument types.
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    struct = parse_structure(structure)
    if target is None:
        if rank is None and density is None:
            raise ValueError("give a target Budget or an explicit rank and/or density")
        if method == "rank_only" and _nonzero_spec(density):
            raise ValueError("method='rank_only' has no sparse part: density must be None or 0")
        if method == "sparse_only" and _nonzero_spec(rank):
            raise ValueError("method='sparse_only' has no low-rank part: rank must be None or 0")
    else:
        from .budget import Budget

        if not isinstance(target, Budget):
            raise TypeError(f"target must be a lowrank_sparse.Budget, got {type(target).__name__}")
        if rank is not None or density is not None:
            raise ValueError("give either a target Budget or explicit rank / density, not both")
    solver: dict[str, Any] = dict(backend=backend, max_iter=max_iter, tol=tol, seed=seed)
    if solver_options:
        solver.update(solver_options)

    new = copy.deepcopy(model)
    if device is not None:
        new = new.to(device)
    all_layers, skipped = find_layers(new)
    if not all_layers:
        extra = f" (skipped: {'; '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""
        raise ValueError(f"model {type(model).__name__} has no compressible layer (nn.Linear or "
                         f"nn.Conv2d with groups=1){extra}")
    selected: list[tuple[str, nn.Module]] = []
    for i, (name, mod) in enumerate(all_layers):
        if include is not None and not _match(name, include):
            skipped[name] = "not matched by include"
        elif _match(name, exclude):
            skipped[name] = "matched by exclude"
        elif keep_first_last and len(all_layers) > 1 and i in (0, len(all_layers) - 1):
            skipped[name] = f"{'first' if i == 0 else 'last'} layer kept (keep_first_last=True)"
        else:
            selected.append((name, mod))
    if not selected:
        raise ValueError(
            "no layer left to compress after include / exclude / keep_first_last: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    names = [n for n, _ in selected]
    cal_kw: dict[str, Any] = dict(sample_size=sample_size, batch_size=batch_size, seed=seed, device=device)
    cal = calibrate(new, calibration_data, layers=names, **cal_kw)
    for k, v in cal.skipped.items():
        skipped.setdefault(k, v)
    selected = [(n, m) for n, m in selected if n in cal.layers]
    input_shape = _input_shape(calibration_data, batch_size)

    from .nn.counts import dense_flops, dense_params, model_flops, model_params

    params_before = model_params(model)
    flops_before = int(model_flops(new, input_shape))

    # ------------------------------------------------------------ sizes per layer
    plan: dict[str, tuple[int, float, int]] = {}  # name -> (rank, density, slices)
    allocation_table: Optional[str] = None
    # solves the allocator ran through error_fn, reused below when the plan picks them
    solved: dict[tuple[str, int, float], Any] = {}
    if target is not None:
        plan, allocation_table = _allocate(
            target, allocation, method, struct, selected, cal.layers, params_before, flops_before, solver, seed,
            solved,
        )
        solved = {k: v for k, v in solved.items() if plan.get(k[0], (None, None))[:2] == k[1:]}
    else:
        for name, mod in selected:
            m, n = cal.layers[name].weight_shape
            hit_r, rv = _lookup(rank, name)
            hit_d, dv = _lookup(density, name)
            if isinstance(rank, Mapping) or isinstance(density, Mapping):
                if not (hit_r and rv is not None) and not (hit_d and dv is not None):
                    plan[name] = (min(m, n), 0.0, 1)  # no pattern matched: untouched
                    continue
            plan[name] = (_resolve_rank(rv if hit_r else None, m, n, name),
                          _resolve_density(dv if hit_d else None, name), 1)

    for name, (r, d, _) in plan.items():
        if r == 0 and d == 0.0:
            raise ValueError(f"layer '{name}': rank 0 and density 0 would delete the layer's weight; "
                             f"give it a rank or a density, or exclude it")

    # ------------------------------------------------------------ per-layer solves
    layer_reports: list[LayerReport] = []
    index_bytes = 0
    for name, orig in _progress(selected, progress, len(selected)):
        r, d, slices = plan[name]
        stats = cal.layers[name]
        if sequential and layer_reports:
            stats = calibrate(new, calibration_data, layers=[name], **cal_kw).layers[name]
        m, n = stats.weight_shape
        positions = _positions(stats, cal.samples)
        p_before = dense_params(orig)
        f_before = dense_flops(orig, stats.in_hw) * stats.calls if stats.kind == "conv" else dense_flops(orig) * positions
        rep = LayerReport(
            name=name, kind=stats.kind, shape=tuple(orig.weight.shape), activation=stats.activation.describe(),
            method=method, structure=struct.name, params_before=p_before, flops_before=f_before,
            note=stats.activation.note,
        )  # fmt: skip
        if r >= min(m, n) or d >= 1.0:
            rep.status = "untouched"
            rep.rank, rep.density = min(m, n), 0.0
            rep.params_after, rep.flops_after = p_before, f_before
            rep.note = "; ".join(x for x in (rep.note, "full rank or density 1: original layer kept") if x)
            layer_reports.append(rep)
            continue
        W0 = orig.weight.detach()
        dev = W0.device if device is None else torch.device(device)
        Wf, bf, a = _folded_problem(stats, orig)
        stats_dev = stats
        if stats.sample is not None and stats.sample.device != dev:
            stats_dev = replace(stats, sample=stats.sample.to(dev))
        reuse = solved.get((name, r, d)) if slices == 1 and device is None and stats is cal.layers[name] else None
        if reuse is not None:  # the allocator already ran this exact solve on the same data
            dec = reuse
            seconds = float(dec.info.seconds)
        else:
            t0 = time.perf_counter()
            dec = _solve(method, Wf.to(dev), r, d, struct, stats_dev, None if bf is None else bf.to(dev),
                         slices, solver)
            seconds = time.perf_counter() - t0
            dec = _unfold_bn(dec, stats, a)
        from .nn import LowRankSparseConv2d, LowRankSparseLinear

        if stats.kind == "conv":
            newmod = LowRankSparseConv2d.from_conv(orig, dec)
        else:
            newmod = LowRankSparseLinear.from_decomposition(dec, bias=orig.bias)
        newmod = newmod.to(device=W0.device, dtype=W0.dtype)
        newmod.train(orig.training)
        err, on = output_error(stats, orig, newmod)
        _set_module(new, name, newmod)
        rep.rank = int(newmod.rank)
        rep.slices = int(newmod.slices)
        nnz = 0 if newmod.sparse is None else int(newmod.sparse.nnz)
        rep.density = nnz / float(m * n)
        rep.params_after = int(newmod.num_params())
        rep.index_bytes = int(newmod.num_index_bytes(packed=True))  # as saved
        index_bytes += rep.index_bytes
        rep.flops_after = newmod.flops(stats.in_hw) * stats.calls if stats.kind == "conv" else newmod.flops() * positions
        rep.output_error_after = err
        rep.error_on = on
        rep.iterations = int(dec.info.iterations)
        rep.converged = bool(dec.info.converged)
        rep.seconds = seconds
        layer_reports.append(rep)

    report = CompressionReport(
        layers=layer_reports,
        skipped=skipped,
        params_before=params_before,
        params_after=model_params(new),
        flops_before=flops_before,
        flops_after=int(model_flops(new, input_shape)),
        index_bytes=index_bytes,
        method=method,
        structure=struct.name,
        target=None if target is None else {"params": target.params, "flops": target.flops},
        allocation=allocation if target is not None else None,
        allocation_table=allocation_table,
        calibration={"batches": cal.batches, "samples": cal.samples, "detection": cal.detection,
                     "detection_note": cal.detection_note, "sample_size": sample_size,
                     "sequential": sequential},
        seconds=time.perf_counter() - t_start,
    )  # fmt: skip
    return new, report


def _nonzero_spec(spec: Any) -> bool:
    if spec is None:
        return False
    if isinstance(spec, Mapping):
        return any(v not in (None, 0, 0.0) for v in spec.values())
    return spec not in (0, 0.0)


def _positions(stats: LayerStats, samples: int) -> int:
    """Input vectors per sample of a linear layer (tokens x calls), >= 1."""
    return max(1, int(round(stats.count / max(samples, 1))))


def _input_shape(data: CalibrationData, batch_size: int) -> tuple[int, ...]:
    x = next(iter(iter_batches(data, batch_size)))
    return tuple(int(s) for s in x.shape[1:])


def _allocate(
    target: Any,
    allocation: str,
    method: str,
    struct: Structure,
    selected: list[tuple[str, nn.Module]],
    stats: dict[str, LayerStats],
    total_params: int,
    total_flops: int,
    solver: dict[str, Any],
    seed: int,
    solved: dict[tuple[str, int, float], Any],
) -> tuple[dict[str, tuple[int, float, int]], Optional[str]]:
    """(rank, density, slices) per layer from :func:`lowrank_sparse.budget.allocate`, and
    its table.  In "lowrank_sparse" mode the allocator's ``error_fn`` runs the real solver
    on the layer (BN-folded, activation-aware) and returns the post-activation error; each
    such decomposition is kept in ``solved[(name, rank, density)]`` for reuse."""
    from . import budget as B

    specs = []
    for name, mod in selected:
        st = stats[name]
        W, bfold = st.folded(mod.weight.detach(), None if mod.bias is None else mod.bias.detach())
        scale = 1.0
        info = st.activation
        if info.nonlinear and st.sample is not None:  # predicted errors after the activation
            scale = B.activation_error_scale(W, bfold, st.sample,
                                             lambda u, i=info: _act(u, i.name, i.negative_slope))
        specs.append(B.LayerSpec(name=name, weight=W, kind=st.kind, block=st.block,
                                 out_hw=st.out_hw, gram=st.gram, error_scale=scale))
    mods = dict(selected)

    def error_fn(layer: Any, rank: int, density: float) -> float:
        """Post-activation error of ``layer`` (a LayerSpec) fitted by the real solver."""
        name = getattr(layer, "name", layer)
        st, mod = stats[name], mods[name]
        Wf, bf, a = _folded_problem(st, mod)
        dec = _unfold_bn(_solve(method, Wf, int(rank), float(density), struct, st, bf, 1, solver), st, a)
        if Wf.numel() <= _REUSE_MAX_ENTRIES:  # big layers: re-solve rather than hold copies
            solved[(name, int(rank), float(density))] = dec
        W0 = mod.weight.detach().reshape(st.weight_shape)
        b0 = None if mod.bias is None else mod.bias.detach()
        return dense_error(st, W0, b0, torch.as_tensor(dec.dense()).to(W0), b0)

    # selection (include / exclude / first-last) is done by compress(): allocate over
    # exactly the selected layers; everything else counts as fixed in the totals
    alloc = B.allocate(specs, target, method=allocation, total_params=total_params, total_flops=total_flops,
                       mode=method, structure=struct, error_fn=error_fn if method == "lowrank_sparse" else None,
                       keep_first_last=False, seed=seed)
    plan: dict[str, tuple[int, float, int]] = {}
    for la in alloc.layers:
        if la.keep_dense:
            plan[la.name] = (min(stats[la.name].weight_shape), 0.0, 1)
        else:
            plan[la.name] = (int(la.rank), float(la.density), int(la.slices))
    return plan, alloc.table()
