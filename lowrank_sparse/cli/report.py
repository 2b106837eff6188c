"""``lowrank-sparse report``: the per-layer table (and PNG plots) of saved compressed
models, read from the report their files carry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .output import CLIError, emit, read_saved

__all__ = ["register", "run", "layer_table"]

# (file, the compression report, the compress command's results) per file
_Entry = tuple[Path, dict[str, Any], dict[str, Any]]


def register(sub: Any) -> None:
    """Add the ``report`` subparser to ``sub`` (argparse's subparsers action)."""
    r = sub.add_parser("report", help="per-layer table (and PNG plots) of saved compressed models")
    r.add_argument("paths", nargs="+", help="one or more .safetensors files written by compress")
    r.add_argument("--plots", metavar="DIR", help="write PNG plots here (ranks/sparsity, errors, accuracy vs budget)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read every file's report, write the plots if asked, print tables or JSON."""
    reports = [_read(Path(p)) for p in args.paths]
    written = _plots(reports, Path(args.plots)) if args.plots else []
    payload = {"reports": [{"file": str(p), "report": rep, "result": cli} for p, rep, cli in reports], "plots": written}
    lines = []
    for p, rep, cli in reports:
        lines.append(f"== {p}")
        lines.append(layer_table(rep))
        if "accuracy_after" in cli:
            lines.append(f"accuracy {cli['accuracy_before']:.2%} -> {cli['accuracy_after']:.2%}")
        lines.append("")
    if written:
        lines.append("plots: " + ", ".join(written))
    emit(args, payload, "\n".join(lines).rstrip())
    return 0


def _read(p: Path) -> _Entry:
    from .. import io as _io

    from ..report import current_keys

    meta = read_saved(p, _io.read_metadata)
    rep = meta.get("user", {}).get("report")
    if rep is None:
        raise CLIError(f"{p} carries no compression report (was it written by 'lowrank-sparse compress'?)")
    return p, current_keys(rep), _current_result_keys(meta.get("user", {}).get("cli", {}))


def _current_result_keys(result: dict[str, Any]) -> dict[str, Any]:
    """The compress command's saved results with the keys of older files under their
    current names: before/after {"params", "flops"} -> {"params", "macs"} (MACs either way)."""
    out = dict(result)
    for when in ("before", "after"):
        counts = out.get(when)
        if isinstance(counts, dict) and "flops" in counts and "macs" not in counts:
            out[when] = {("macs" if k == "flops" else k): v for k, v in counts.items()}
    return out


def _plots(reports: list[_Entry], outdir: Path) -> list[str]:
    """Per-file layer plots, plus accuracy vs budget when there are several files."""
    from ..plots import plot_budget_sweep, plot_layers

    outdir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for p, rep, _ in reports:
        written += [str(f) for f in plot_layers(rep, outdir / p.stem)]
    if len(reports) > 1:
        sweep = [(str(p), rep, cli) for p, rep, cli in reports]
        written.append(str(plot_budget_sweep(sweep, outdir / "accuracy_vs_budget.png")))
    return written


def layer_table(rep: dict[str, Any]) -> str:
    """Aligned text table, one row per layer of a report dict (``Report.to_dict()``)."""
    rows = [("layer", "kind", "shape", "act", "rank", "density", "params", "ratio", "error")]
    for lay in rep.get("layers", []):
        pb, pa = lay.get("params_before") or 0, lay.get("params_after") or 0
        err = lay.get("output_error_after")
        rows.append((
            str(lay.get("name")),
            str(lay.get("kind")),
            "x".join(str(s) for s in lay.get("shape", [])),
            str(lay.get("activation")),
            str(lay.get("rank")),
            f"{lay.get('density') or 0:.3f}",
            f"{pa:,d}",
            f"{pa / pb:.2f}" if pb else "-",
            "-" if err is None else f"{err:.4f}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
