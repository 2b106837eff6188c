"""What :func:`lowrank_sparse.compress` did: per-layer and whole-model records.

Counts: parameters are stored values (weights, biases, factor entries, nonzeros of S;
index storage of S is reported separately in bytes).  MACs are multiply-accumulates
per input sample of the Linear / Conv2d layers and their replacements (see
:mod:`lowrank_sparse.nn.counts`; FLOPs = 2 x MACs).  The fields once named
``flops_*`` are deprecated aliases of the ``macs_*`` ones (the same MAC counts), and
:func:`current_keys` reads the dicts of reports saved under those names.  Errors are relative Frobenius norms of the
difference of a layer's output after its activation (see :class:`LayerReport`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from ._renamed import renamed

__all__ = ["LayerReport", "CompressionReport", "current_keys"]

#: Keys of report dicts written before MACs were called by their name -> current keys.
OLD_KEYS = {"flops_before": "macs_before", "flops_after": "macs_after", "flops_ratio": "macs_ratio"}


@renamed(OLD_KEYS)
@dataclass
class LayerReport:
    """One compressible layer.

    Attributes:
        name: qualified module name.
        kind: "linear" or "conv".
        shape: the original weight's shape, e.g. (out, in) or (out, in, kh, kw).
        activation: the detected activation, as text (e.g. "relu (after bn1, fx)").
        status: "compressed" (replaced by a pair module) or "untouched" (original
            layer kept: full rank, density 1, or no rank/density given for it).
        method: "lowrank_sparse", "rank_only", "sparse_only" (or another method
            registered with :func:`lowrank_sparse.compress.register_method`).
        rank: rank of L per slice (0: no low-rank part).
        density: nonzeros of S / (m*n), as stored (0: no sparse part).
        structure: sparsity structure of S.
        slices: ALDS channel slices of L (1: plain low rank).
        params_before, params_after: stored values of the layer (bias included).
        index_bytes: bytes of index storage of S after compression, as saved (packed).
        macs_before, macs_after: MACs per sample of the layer.
        output_error_before: error of the original layer (0 by definition).
        output_error_after: ||act(y) - act(y')|| / ||act(y)|| with y the original
            layer's output (BatchNorm folded when one sits before the activation) and
            y' the new module's, on the calibration inputs (see ``error_on``).
        error_on: "subsample (s columns)" when measured on the layer's input
            subsample, or "gram (N columns)" for layers fitted as linear (exact over
            all N calibration columns from the Gram matrix and mean).
        iterations, converged, seconds: solver record (seconds include the solve
            only).
        note: anything worth knowing (activation approximations, fallbacks).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    activation: str
    status: str = "compressed"
    method: str = "lowrank_sparse"
    rank: int = 0
    density: float = 0.0
    structure: str = "unstructured"
    slices: int = 1
    params_before: int = 0
    params_after: int = 0
    index_bytes: int = 0
    macs_before: int = 0
    macs_after: int = 0
    output_error_before: float = 0.0
    output_error_after: float = 0.0
    error_on: str = ""
    iterations: int = 0
    converged: bool = True
    seconds: float = 0.0
    note: str = ""

    @property
    def params_ratio(self) -> float:
        """params_after / params_before."""
        return self.params_after / self.params_before if self.params_before else math.nan

    @property
    def macs_ratio(self) -> float:
        """macs_after / macs_before."""
        return self.macs_after / self.macs_before if self.macs_before else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["params_ratio"] = _num(self.params_ratio)
        d["macs_ratio"] = _num(self.macs_ratio)
        for k in ("density", "output_error_before", "output_error_after", "seconds"):
            d[k] = _num(d[k])
        return d


def _num(x: float) -> Optional[float]:
    """JSON has no NaN / Inf: map them to None."""
    x = float(x)
    return x if math.isfinite(x) else None


@renamed(OLD_KEYS)
@dataclass
class CompressionReport:
    """The whole model.

    Attributes:
        layers: one record per compressible layer that was considered, model order.
        skipped: name -> reason for layers left out (grouped convs, names not matched
            by include / matched by exclude, rejected by filter_fn, keep_first_last,
            never called during calibration).
        params_before, params_after: stored parameter values of the whole model
            (every parameter, not only the compressed layers).
        macs_before, macs_after: MACs per sample of all Linear / Conv2d / pair
            modules of the model (input shape from the calibration data).
        index_bytes: index storage of all sparse parts after compression, as saved (packed).
        method, structure: as passed to compress.
        target: the Budget as a dict ({"params": ..., "macs": ...}, and "latency" when set) or None.
        allocation: allocation method ("alds", "enc", "uniform") or None when the
            ranks / densities were given explicitly.
        allocation_table: the budget module's table, when a target was given.
        calibration: batches, samples, detection method ("fx" / "hooks") and note.
        seconds: wall time of compress().
    """

    layers: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    index_bytes: int = 0
    method: str = "lowrank_sparse"
    structure: str = "unstructured"
    target: Optional[dict[str, Any]] = None
    allocation: Optional[str] = None
    allocation_table: Optional[str] = None
    calibration: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def params_ratio(self) -> float:
        """Whole-model params_after / params_before."""
        return self.params_after / self.params_before if self.params_before else math.nan

    @property
    def macs_ratio(self) -> float:
        """Whole-model macs_after / macs_before."""
        return self.macs_after / self.macs_before if self.macs_before else math.nan

    @property
    def compressed(self) -> list[LayerReport]:
        """The layers that were replaced."""
        return [r for r in self.layers if r.status == "compressed"]

    def layer(self, name: str) -> LayerReport:
        """The record of layer ``name``.

        Raises:
            KeyError: no such layer in the report.
        """
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r} in the report (layers: {[r.name for r in self.layers]})")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN mapped to None); ``json.dumps`` works on it."""
        return {
            "layers": [r.to_dict() for r in self.layers],
            "skipped": dict(self.skipped),
            "params_before": int(self.params_before),
            "params_after": int(self.params_after),
            "params_ratio": _num(self.params_ratio),
            "macs_before": int(self.macs_before),
            "macs_after": int(self.macs_after),
            "macs_ratio": _num(self.macs_ratio),
            "index_bytes": int(self.index_bytes),
            "method": self.method,
            "structure": self.structure,
            "target": None if self.target is None else dict(self.target),
            "allocation": self.allocation,
            "allocation_table": self.allocation_table,
            "calibration": dict(self.calibration),
            "seconds": _num(self.seconds),
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``."""
        return json.dumps(self.to_dict(), **kwargs)

    def table(self) -> str:
        """A plain-text table: one row per layer, then totals and skipped layers."""
        head = ["layer", "kind", "shape", "activation", "rank", "density", "params", "ratio",
                "MACs", "ratio", "error", "iters", "conv", "s"]
        rows: list[list[str]] = []
        for r in self.layers:
            if r.status == "untouched":
                rank, dens, err, it, cv, sec = "full", "-", "0", "-", "-", "-"
            else:
                rank = str(r.rank) + (f"x{r.slices}" if r.slices > 1 else "")
                dens = f"{r.density:.3f}"
                err = f"{r.output_error_after:.4f}"
                it, cv, sec = str(r.iterations), "yes" if r.converged else "no", f"{r.seconds:.2f}"
            rows.append([
                r.name, r.kind, "x".join(str(s) for s in r.shape), r.activation, rank, dens,
                f"{r.params_before}->{r.params_after}", _ratio(r.params_ratio),
                f"{r.macs_before}->{r.macs_after}", _ratio(r.macs_ratio), err, it, cv, sec,
            ])  # fmt: skip
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines.append("")
        lines.append(
            f"model: params {self.params_before} -> {self.params_after} ({_ratio(self.params_ratio)}), "
            f"MACs/sample {self.macs_before} -> {self.macs_after} ({_ratio(self.macs_ratio)}), "
            f"sparse index storage {self.index_bytes} bytes"
        )
        how = f"method {self.method}, structure {self.structure}"
        if self.target is not None:
            tgt = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in self.target.items() if v is not None)
            how += f", target {tgt}, allocation {self.allocation}"
        lines.append(how)
        if self.calibration:
            c = self.calibration
            cal = f"calibration: {c.get('samples', '?')} samples in {c.get('batches', '?')} batches, activations by {c.get('detection', '?')}"
            if c.get("detection_note"):
                cal += f" ({c['detection_note']})"
            if c.get("sequential"):
                cal += "; sequential" + (", error-corrected targets" if c.get("error_correction") else "")
            lines.append(cal)
        notes = [(r.name, r.note) for r in self.layers if r.note]
        if notes:
            lines.append("notes:")
            lines += [f"  {n}: {t}" for n, t in notes]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {n}: {why}" for n, why in self.skipped.items()]
        if self.allocation_table:
            lines.append("allocation:")
            lines += ["  " + ln for ln in self.allocation_table.splitlines()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _ratio(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3f}"


def current_keys(report: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a report dict (:meth:`CompressionReport.to_dict`, e.g. read from a saved
    file's metadata) with the keys of older versions under their current names:
    ``flops_before`` / ``flops_after`` / ``flops_ratio`` (whole model and per layer) and
    the target's ``flops`` become the ``macs`` ones (the same MAC counts).  A dict that
    has the current keys is returned as an equal copy."""
    out = _renamed_keys(report, OLD_KEYS)
    if isinstance(out.get("layers"), list):
        out["layers"] = [_renamed_keys(r, OLD_KEYS) if isinstance(r, Mapping) else r for r in out["layers"]]
    if isinstance(out.get("target"), Mapping):
        out["target"] = _renamed_keys(out["target"], {"flops": "macs"})
    return out


def _renamed_keys(d: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """``d`` with each ``old`` key of ``renames`` stored under its new name (a value under
    the new name, if present too, wins), in the original key order."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        new = renames.get(k)
        if new is None:
            out[k] = v
        elif new not in d:
            out[new] = v
    return out
