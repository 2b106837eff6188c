"""Budget targets, layer descriptions, allocations, and THE parameter/MAC formulas.

Counting formulas (the single source of truth; the nn module pair must match them)
-----------------------------------------------------------------------------------
A compressible layer has weight W of shape (m, n): (out_features, in_features) for
``nn.Linear``, (out_channels, in_channels * kh * kw) for ``nn.Conv2d``.  Its compressed
form is L + S with

* L: rank ``r`` per input-channel slice, ``g = slices`` contiguous slices of the input
  columns (g = 1: plain low rank).  Stored as a block-diagonal first factor (slice i is
  (r, n/g), g slices -> ``r * n`` values) and a second factor (m, g*r) -> ``r * g * m``
  values.  Deployed as a grouped conv (g groups, in_channels -> g*r channels, the layer's
  kernel/stride/padding) followed by a 1x1 conv (g*r -> m); for linear layers as two
  matmuls.
* S: ``nnz(S)`` stored values; for a group structure at density d it holds
  ``Structure.budget(d, m, n)`` groups of ``Structure.group_size(m, n)`` entries; for N:M
  exactly ``m*n*N/M`` entries.  Index storage is not counted (reported separately by nn).

  params(layer) = r*g*m + r*n + nnz(S)            (+ bias, unchanged, not counted here)
  MACs(layer)   = P * (r*n + r*g*m + nnz(S))       P = H_out*W_out for conv, 1 for linear

MACs are multiply-accumulates per sample; the first factor runs with the layer's stride
so both factors and S work at the output resolution H_out x W_out.  Bias additions are not
counted.  A layer kept dense costs m*n params and P*m*n MACs.  (FLOPs, where a
tool reports them, are 2 x MACs: a multiply and an add.)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

import torch

from .._renamed import renamed, renamed_function
from ..structure import Structure, parse_structure

LayerKind = Literal["linear", "conv"]

#: what a Budget's params / macs fractions are of (see :class:`Budget`)
SCOPES = ("model", "layers")
#: Budget.weighting values: how the allocator compares layers' errors.
WEIGHTINGS = ("uniform", "sensitivity")


# ----------------------------------------------------------------------------- formulas
def lowrank_params(m: int, n: int, rank: int, slices: int = 1) -> int:
    """Stored values of L: ``rank*slices*m + rank*n`` (both factors, block-diagonal first)."""
    if rank < 0 or slices < 1:
        raise ValueError(f"rank must be >= 0 and slices >= 1, got rank={rank}, slices={slices}")
    if n % slices != 0:
        raise ValueError(f"slices={slices} must divide the input dimension n={n}")
    return int(rank) * int(slices) * int(m) + int(rank) * int(n)


def sparse_nnz(m: int, n: int, density: float, structure: Structure) -> int:
    """Stored values of S at ``density`` under ``structure`` (whole groups; N:M fixed)."""
    if density <= 0.0:
        return 0
    return structure.budget(density, m, n) * structure.group_size(m, n)


def layer_params(m: int, n: int, rank: int, density: float, slices: int = 1,
                 structure: Structure | str = "unstructured", *, block: int = 1) -> int:
    """``r*g*m + r*n + nnz(S)``: stored weight values of a compressed layer (bias excluded)."""
    st = parse_structure(structure, block=block)
    return lowrank_params(m, n, rank, slices) + sparse_nnz(m, n, density, st)


def layer_macs(m: int, n: int, rank: int, density: float, slices: int = 1,
               structure: Structure | str = "unstructured", *, block: int = 1,
               out_hw: Optional[tuple[int, int]] = None) -> int:
    """MACs per sample: ``P * (r*n + r*g*m + nnz(S))``, P = H_out*W_out (1 for linear)."""
    p = 1 if out_hw is None else int(out_hw[0]) * int(out_hw[1])
    return p * layer_params(m, n, rank, density, slices, structure, block=block)


layer_flops = renamed_function(layer_macs, "layer_flops")


# ----------------------------------------------------------------------------- targets
@renamed({"flops": "macs"})
@dataclass(frozen=True)
class Budget:
    """Network-wide target: fractions of the WHOLE model to keep.

    Attributes:
        params: fraction of all parameters of the model (including layers that are not
            compressed, biases, BatchNorm) to keep, in (0, 1]; None: no parameter target.
        macs: fraction of the model's multiply-accumulates per sample to keep, in (0, 1];
            None: no MAC target.  (``flops=`` is a deprecated alias with the same meaning.)
        latency: fraction of the dense model's measured forward time on this machine to
            keep, in (0, 1]: the sum over the compressible layers of their predicted
            time (each in its faster exact form, :mod:`lowrank_sparse.budget.latency`)
            plus the untouched rest, over the same sum for the dense model.
        latency_model: a :class:`~lowrank_sparse.budget.latency.LatencyModel` (input
            shapes from an example batch, or given tables) for ``latency``; None: built
            from the calibration statistics.
        scope: what ``params`` and ``macs`` are fractions of: "model" (the whole model,
            the default) or "layers" (the weights of the layers compress() selects, the
            convention of the one-shot LLM pruning papers: a transformer's embeddings,
            norms and kept head are neither counted nor charged).  ``latency`` is always
            of the whole model's forward time.
        weighting: how the allocator compares the layers' errors: "uniform" (each
            layer's relative output error as it is, the default) or "sensitivity"
            (each weighted by how much of it reaches the model's output, measured by
            compress() on the calibration data: :mod:`lowrank_sparse.budget.sensitivity`).
    At least one of params / macs / latency must be given; all that are given must hold.
    """

    params: Optional[float] = None
    macs: Optional[float] = None
    latency: Optional[float] = None
    latency_model: Optional[Any] = field(default=None, compare=False, repr=False)
    scope: str = "model"
    weighting: str = "uniform"

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"Budget.weighting must be one of {', '.join(map(repr, WEIGHTINGS))}, "
                             f"got {self.weighting!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"Budget.scope must be one of {', '.join(map(repr, SCOPES))}, got {self.scope!r}")
        if self.params is None and self.macs is None and self.latency is None:
            raise ValueError("Budget needs params=..., macs=... and/or latency=... (fractions of the model to keep)")
        for name in ("params", "macs", "latency"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"Budget.{name} must be a float in (0, 1], got {type(v).__name__}")
            if not (math.isfinite(v) and 0.0 < v <= 1.0):
                raise ValueError(f"Budget.{name} must be a fraction in (0, 1], got {v}")
        if self.latency_model is not None:
            from .latency import LatencyModel

            if not isinstance(self.latency_model, LatencyModel):
                raise TypeError(f"Budget.latency_model must be a LatencyModel, got {type(self.latency_model).__name__}")
            if self.latency is None:
                raise ValueError("Budget.latency_model is given without latency=... (the fraction of the dense time)")

    def as_dict(self) -> dict[str, Any]:
        """The targets as a plain dict: params, macs, latency when it is set, and scope
        when it is not "model"."""
        d: dict[str, Any] = {"params": self.params, "macs": self.macs}
        if self.latency is not None:
            d["latency"] = self.latency
        if self.scope != "model":
            d["scope"] = self.scope
        if self.weighting != "uniform":
            d["weighting"] = self.weighting
        return d


@renamed({"dense_flops": "dense_macs", "flops": "macs"})
@dataclass
class LayerSpec:
    """One compressible layer as the allocator sees it.

    Attributes:
        name: module name (matched by fnmatch patterns for exclusions / overrides).
        weight: (m, n) weight matrix; conv: (out, in*kh*kw).  Not modified.
        kind: "linear" or "conv".
        block: kh*kw for convs (columns per input channel), 1 for linear.
        out_hw: (H_out, W_out) output size for convs (required for the MACs of convs).
        gram: optional (n, n) X X^T / N of the layer inputs; makes the error curves
            data-aware (singular values of W G^{1/2}).
        error_scale: factor (> 0) from the relative whitened pre-activation error to the
            relative error after the layer's activation (and BatchNorm), for small
            errors; all predicted errors of the layer are multiplied by it.  1 for layers
            without a nonlinearity; :func:`lowrank_sparse.budget.curves.activation_error_scale`
            measures it on calibration inputs (compress() does).
        sensitivity: factor (> 0) on the layer's errors when the allocator compares
            layers: how much of its error reaches the model's output, relative to the
            other layers (:mod:`lowrank_sparse.budget.sensitivity`; compress() measures
            it under ``Budget(weighting="sensitivity")``).  1: all layers alike.
    """

    name: str
    weight: torch.Tensor
    kind: LayerKind = "linear"
    block: int = 1
    out_hw: Optional[tuple[int, int]] = None
    gram: Optional[torch.Tensor] = None
    error_scale: float = 1.0
    sensitivity: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"LayerSpec.name must be a str, got {type(self.name).__name__}")
        if not isinstance(self.weight, torch.Tensor):
            raise TypeError(f"LayerSpec {self.name!r}: weight must be a torch.Tensor, got {type(self.weight).__name__}")
        if self.weight.ndim != 2:
            raise ValueError(f"LayerSpec {self.name!r}: weight must be 2-D (m, n), got shape {tuple(self.weight.shape)}")
        if self.kind not in ("linear", "conv"):
            raise ValueError(f"LayerSpec {self.name!r}: kind must be 'linear' or 'conv', got {self.kind!r}")
        if self.block < 1 or self.weight.shape[1] % self.block != 0:
            raise ValueError(f"LayerSpec {self.name!r}: block={self.block} must be >= 1 and divide n={self.weight.shape[1]}")
        if self.kind == "linear" and self.block != 1:
            raise ValueError(f"LayerSpec {self.name!r}: linear layers have block=1, got {self.block}")
        if self.kind == "conv" and self.out_hw is None:
            raise ValueError(f"LayerSpec {self.name!r}: conv layers need out_hw=(H_out, W_out)")
        if self.out_hw is not None:
            self.out_hw = (int(self.out_hw[0]), int(self.out_hw[1]))
            if min(self.out_hw) < 1:
                raise ValueError(f"LayerSpec {self.name!r}: out_hw must be positive, got {self.out_hw}")
        if self.gram is not None:
            n = self.weight.shape[1]
            if not isinstance(self.gram, torch.Tensor) or tuple(self.gram.shape) != (n, n):
                raise ValueError(f"LayerSpec {self.name!r}: gram must be a ({n}, {n}) tensor")
        self.error_scale = self._positive("error_scale")
        self.sensitivity = self._positive("sensitivity")
        if not bool(torch.isfinite(self.weight).all()):
            raise ValueError(f"LayerSpec {self.name!r}: weight has non-finite entries")

    def _positive(self, field_name: str) -> float:
        """The field as a float, checked finite and > 0."""
        v = getattr(self, field_name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"LayerSpec {self.name!r}: {field_name} must be a float, got {type(v).__name__}")
        if not (math.isfinite(v) and v > 0.0):
            raise ValueError(f"LayerSpec {self.name!r}: {field_name} must be finite and > 0, got {v}")
        return float(v)

    @property
    def m(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n(self) -> int:
        return int(self.weight.shape[1])

    @property
    def in_channels(self) -> int:
        """Input channels (conv) / features (linear): n // block."""
        return self.n // self.block

    @property
    def spatial(self) -> int:
        """P = H_out*W_out for convs (with out_hw), 1 for linear layers."""
        return 1 if self.out_hw is None else self.out_hw[0] * self.out_hw[1]

    @property
    def dense_params(self) -> int:
        return self.m * self.n

    @property
    def dense_macs(self) -> int:
        """MACs per sample of the dense layer: P * m * n."""
        return self.spatial * self.m * self.n

    def params(self, rank: int, density: float, slices: int = 1, structure: Structure | str = "unstructured") -> int:
        """:func:`layer_params` for this layer."""
        return layer_params(self.m, self.n, rank, density, slices, structure, block=self.block)

    def macs(self, rank: int, density: float, slices: int = 1, structure: Structure | str = "unstructured") -> int:
        """:func:`layer_macs` for this layer."""
        return self.spatial * self.params(rank, density, slices, structure)


# ----------------------------------------------------------------------------- outputs
@renamed({"flops": "macs"})
@dataclass
class LayerAllocation:
    """The configuration chosen for one layer.

    Attributes:
        name: layer name.
        rank: rank of L per slice (0: no low-rank part).
        density: fraction of W's entries S keeps (0: no sparse part).
        slices: ALDS input-channel slices of L (1: plain low rank).
        params: stored weight values (formula in the module docstring; bias excluded).
        macs: MACs per sample (bias excluded).
        predicted_error: predicted relative error ||(W - W_hat) G^{1/2}||_F / ||W G^{1/2}||_F
            (G = identity without a gram); 0 for layers kept dense.
        kind, shape: "linear"/"conv" and (m, n).
        keep_dense: True if the layer stays as the original dense layer (excluded, too
            small to gain, or generous budget); rank/density are then 0 and irrelevant.
        nnz: stored entries of S.
        source: "allocated", "excluded", "override" or "first/last".
        seconds: predicted seconds per forward of the layer on its input (latency
            budgets only; None otherwise).
        form: the exact form the layer is predicted to run fastest in: "pair" (L + S
            as stored), "dense" (the merged U V + S) or "original" (kept dense); ""
            without a latency model.
    """

    name: str
    rank: int
    density: float
    slices: int
    params: int
    macs: int
    predicted_error: float
    kind: str = "linear"
    shape: tuple[int, int] = (0, 0)
    keep_dense: bool = False
    nnz: int = 0
    source: str = "allocated"
    seconds: Optional[float] = None
    form: str = ""


@renamed({"total_flops": "total_macs", "flops": "macs", "flops_ratio": "macs_ratio"})
@dataclass
class Allocation:
    """Per-layer configurations chosen to meet a network-wide Budget.

    Attributes:
        layers: one LayerAllocation per LayerSpec, in input order.
        method, mode, structure: what produced it.
        target: the Budget.
        total_params, total_macs: the dense model's totals (everything, not only the layers;
            MACs per sample).
        params, macs: the totals after compression (fixed parts + layers).
        info: method-specific details (error level, metric, iterations, seconds).
        dense_seconds, seconds: with a latency model, the predicted seconds per forward
            of the dense model (compressible layers + the rest) and after compression.
    """

    layers: list[LayerAllocation]
    method: str
    mode: str
    structure: str
    target: Budget
    total_params: int
    total_macs: int
    params: int
    macs: int
    info: dict[str, Any] = field(default_factory=dict)
    dense_seconds: Optional[float] = None
    seconds: Optional[float] = None

    @property
    def latency_ratio(self) -> float:
        """Predicted seconds after compression over the dense model's (nan without a latency model)."""
        if self.seconds is None or not self.dense_seconds:
            return float("nan")
        return self.seconds / self.dense_seconds

    @property
    def params_ratio(self) -> float:
        """Kept fraction of the whole model's parameters."""
        return self.params / self.total_params if self.total_params else float("nan")

    @property
    def macs_ratio(self) -> float:
        """Kept fraction of the whole model's MACs."""
        return self.macs / self.total_macs if self.total_macs else float("nan")

    def __getitem__(self, name: str) -> LayerAllocation:
        for la in self.layers:
            if la.name == name:
                return la
        raise KeyError(name)

    def max_error(self) -> float:
        """Largest predicted error over compressed layers."""
        return max((la.predicted_error for la in self.layers), default=0.0)

    def table(self) -> str:
        """Aligned text table: one row per layer, then totals and achieved ratios."""
        head = ["layer", "kind", "shape", "rank", "slices", "density", "params", "MACs", "pred.err"]
        lat = self.seconds is not None
        if lat:
            head += ["pred.ms", "form"]
        rows = []
        for la in self.layers:
            dense = la.keep_dense
            rows.append([
                la.name, la.kind, f"{la.shape[0]}x{la.shape[1]}",
                "dense" if dense else str(la.rank),
                "-" if dense else str(la.slices),
                "-" if dense else f"{la.density:.4f}",
                f"{la.params:,}", f"{la.macs:,}", f"{la.predicted_error:.4f}",
            ] + ([f"{1e3 * la.seconds:.3f}" if la.seconds is not None else "-", la.form or "-"] if lat else []))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        left = {0, 1, 2, 10}

        def fmt(r: list[str]) -> str:
            return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        out = [fmt(head), "  ".join("-" * w for w in widths)]
        out += [fmt(r) for r in rows]
        lp = sum(la.params for la in self.layers)
        lm = sum(la.macs for la in self.layers)
        out.append("  ".join("-" * w for w in widths))
        out.append(f"layers total: params {lp:,}  MACs {lm:,}")
        tgt = []
        if self.target.params is not None:
            tgt.append(f"params {self.target.params:.4f}")
        if self.target.macs is not None:
            tgt.append(f"macs {self.target.macs:.4f}")
        if self.target.latency is not None:
            tgt.append(f"latency {self.target.latency:.4f}")
        out.append(
            f"{'model' if self.target.scope == 'model' else 'selected layers'}: params {self.params:,} / {self.total_params:,} = {self.params_ratio:.4f}   "
            f"MACs {self.macs:,} / {self.total_macs:,} = {self.macs_ratio:.4f}   "
            f"target: {', '.join(tgt)}   method={self.method} mode={self.mode} structure={self.structure}"
        )
        if lat:
            out.append(f"predicted latency: {1e3 * self.seconds:.3f} ms / {1e3 * self.dense_seconds:.3f} ms dense = "
                       f"{self.latency_ratio:.4f} (layers in their faster exact form; rest of the model "
                       f"{1e3 * float(self.info.get('rest_seconds', 0.0)):.3f} ms)")
        tr = self.info.get("tradeoff")
        if tr:
            ok = sum(t["objective"] is not None for t in tr["tried"])
            out.append(f"size/latency trade-off: candidates {tr['subset']}, weight of the seconds {tr['weight']:g} "
                       f"(best of {ok} feasible among {len(tr['tried'])} searched)")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (json.dumps works on it)."""
        d = {
            "method": self.method, "mode": self.mode, "structure": self.structure,
            "target": self.target.as_dict(),
            "total_params": int(self.total_params), "total_macs": int(self.total_macs),
            "params": int(self.params), "macs": int(self.macs),
            "params_ratio": self.params_ratio, "macs_ratio": self.macs_ratio,
            "dense_seconds": self.dense_seconds, "seconds": self.seconds,
            "latency_ratio": None if self.seconds is None else self.latency_ratio,
            "layers": [{**asdict(la), "shape": list(la.shape)} for la in self.layers],
            "info": _jsonable(self.info),
        }
        json.dumps(d)
        return d


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        return x.item()
    return str(x)
