"""PNG plots of compression reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_layers", "plot_budget_sweep"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_layers(report: dict[str, Any], prefix: str | Path) -> list[Path]:
    """Per-layer bars of one report (``CompressionReport.to_dict()``).

    Writes ``<prefix>_layers.png``: three panels sharing the layer axis:
    rank of L relative to full rank min(m, n), density of S, and the relative
    post-activation output error.  Returns the written paths.
    """
    plt = _pyplot()
    layers = [l for l in report.get("layers", []) if l.get("status", "compressed") == "compressed"]
    if not layers:
        raise ValueError("the report has no compressed layers to plot")
    names = [str(l["name"]) for l in layers]
    full = []
    for l in layers:
        shape = l["shape"]
        m = shape[0]
        n = 1
        for s in shape[1:]:
            n *= s
        full.append(max(1, min(m, n)))
    rank_frac = [(l.get("rank") or 0) * (l.get("slices") or 1) / f for l, f in zip(layers, full)]
    density = [l.get("density") or 0.0 for l in layers]
    error = [l.get("output_error_after") or 0.0 for l in layers]
    params = [(l.get("params_after") or 0) / max(1, l.get("params_before") or 1) for l in layers]
    x = range(len(layers))
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.45 * len(layers) + 2), 8), sharex=True)
    axes[0].bar(x, rank_frac, color="tab:blue", label="rank / min(m, n)")
    axes[0].plot(list(x), params, "k.", label="params kept")
    axes[0].set_ylabel("fraction")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, density, color="tab:orange")
    axes[1].set_ylabel("density of S")
    axes[2].bar(x, error, color="tab:red")
    axes[2].set_ylabel("rel. output error")
    axes[2].set_xticks(list(x))
    axes[2].set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    title = report.get("method", "")
    fig.suptitle(f"per-layer allocation {title}".strip())
    fig.tight_layout()
    out = Path(f"{prefix}_layers.png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return [out]


def plot_budget_sweep(runs: Sequence[tuple[str, dict[str, Any], dict[str, Any]]], path: str | Path) -> Path:
    """Accuracy vs fraction of parameters kept, one point per run.

    ``runs``: (label, report dict, CLI result dict with ``accuracy_after`` and
    ``before``/``after`` counts).  Runs without an accuracy are skipped.
    """
    plt = _pyplot()
    pts = []
    for label, _, res in runs:
        acc = res.get("accuracy_fine_tuned", res.get("accuracy_after"))
        if acc is None or "before" not in res:
            continue
        pts.append((res["after"]["params"] / res["before"]["params"], acc, label, res.get("accuracy_before")))
    if not pts:
        raise ValueError("no run carries an accuracy to plot")
    pts.sort()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="compressed")
    base = [p[3] for p in pts if p[3] is not None]
    if base:
        ax.axhline(base[0], color="gray", ls="--", label="original")
    ax.set_xlabel("fraction of parameters kept")
    ax.set_ylabel("test accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
