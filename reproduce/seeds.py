"""Aggregate sweep rows over seeds: mean +- standard deviation per cell, and which
method wins a cell only where the difference is larger than the spread.

A *cell* is (model, dataset, schedule, budget, allocation, structure, fine-tuning recipe);
the rows of one method in a cell differ only in ``seed`` (the sweep's ``--seed`` seeds
the dense network's training, the calibration sample, the fine-tuning subset and its
batch order, and the test subset).  Per method and metric the summary holds the mean
and the sample standard deviation (n - 1 in the denominator) over the seeds.

Win rule: a method beats sparse-only pruning (the reference every other method of a cell
is called against) when ``mean(method) - mean(sparse-only)`` is larger than
``std(method) + std(sparse-only)``; it loses when the difference is that large the other
way; anything else is a tie.  Cells with fewer than two seeds on either side are not
called.  Beside the call, the *paired* difference: per seed, method minus sparse-only
(both share that seed's dense network, calibration sample and data), as mean ± sample
standard deviation over the seeds that both have; it removes the seed-to-seed spread of
the dense network, which dominates the unpaired deviations.

Usage::

    python reproduce/seeds.py --jsonl docs/results/seeds.jsonl --out docs/results/seeds.md
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSONL = REPO / "docs" / "results" / "seeds.jsonl"
CELL_FIELDS = ("model", "dataset", "schedule", "budget", "allocation", "structure", "ft_recipe")
METRICS = ("acc_after", "acc_ft")
METRIC_TEXT = {"acc_after": "no fine-tuning", "acc_ft": "after fine-tuning"}
REFERENCE = "sparse_only"
CALL_TEXT = {"win": "beats sparse-only", "loss": "loses to sparse-only", "tie": "tie", "-": "-"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the deviation of a single value is nan."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = sum(values) / n
    if n == 1:
        return m, math.nan
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def cell_of(row: dict[str, Any]) -> tuple:
    """The cell of a row; rows written before a field existed get its default."""
    defaults = {"structure": "unstructured", "ft_recipe": "ce"}
    return tuple(row.get(f, defaults.get(f)) for f in CELL_FIELDS)


def latest_ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last "ok" row per (cell, method, seed)."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("status") == "ok":
            out[(cell_of(r), r["method"], r["seed"])] = r
    return list(out.values())


def summarise(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """{cell: {method: {"seeds": [...], metric: (mean, std, n)}}} over the ok rows."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in latest_ok(rows):
        if r["method"] != "dense":
            groups[cell_of(r)][r["method"]].append(r)
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for cell, methods in groups.items():
        out[cell] = {}
        for method, rs in methods.items():
            entry: dict[str, Any] = {"seeds": sorted(r["seed"] for r in rs)}
            for metric in METRICS:
                vals = [float(r[metric]) for r in rs if r.get(metric) is not None]
                entry[metric] = (*mean_std(vals), len(vals)) if vals else None
            out[cell][method] = entry
    return out


def paired_difference(rows: list[dict[str, Any]], cell: tuple, method: str, metric: str,
                      ref: str = REFERENCE) -> Optional[tuple[float, float, int]]:
    """(mean, std, n) over seeds of ``metric`` of ``method`` minus that of ``ref`` in ``cell``."""
    by: dict[str, dict[int, float]] = {method: {}, ref: {}}
    for r in latest_ok(rows):
        if cell_of(r) == cell and r["method"] in by and r.get(metric) is not None:
            by[r["method"]][r["seed"]] = float(r[metric])
    seeds = sorted(set(by[method]) & set(by[ref]))
    if not seeds:
        return None
    return (*mean_std([by[method][s] - by[ref][s] for s in seeds]), len(seeds))


def verdict(a: Optional[tuple[float, float, int]], b: Optional[tuple[float, float, int]]) -> str:
    """"win" / "loss" / "tie" of ``a`` against ``b`` by the win rule, "-" if not callable."""
    if a is None or b is None or a[2] < 2 or b[2] < 2:
        return "-"
    diff, spread = a[0] - b[0], a[1] + b[1]
    if diff > spread:
        return "win"
    if -diff > spread:
        return "loss"
    return "tie"


def dense_accuracy(rows: list[dict[str, Any]]) -> dict[tuple, tuple[float, float, int]]:
    """{(model, dataset, schedule): (mean, std, n)} of the dense rows' test accuracy."""
    acc: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in latest_ok(rows):
        if r["method"] == "dense" and r.get("acc_before") is not None:
            acc[(r["model"], r["dataset"], r["schedule"])][r["seed"]] = float(r["acc_before"])
    return {k: (*mean_std(list(v.values())), len(v)) for k, v in acc.items()}


def _pm(stat: Optional[tuple[float, float, int]]) -> str:
    if stat is None:
        return "-"
    m, s, n = stat
    return f"{100 * m:.2f} ± {100 * s:.2f} (n={n})" if n > 1 else f"{100 * m:.2f} (n=1)"


def _pm_diff(stat: Optional[tuple[float, float, int]]) -> str:
    if stat is None:
        return "-"
    m, s, n = stat
    return f"{100 * m:+.2f} ± {100 * s:.2f} (n={n})" if n > 1 else f"{100 * m:+.2f} (n=1)"


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per (model, dataset, schedule, fine-tuning recipe)."""
    summary, dense = summarise(rows), dense_accuracy(rows)
    lines = ["# Seeds: mean ± standard deviation over seeds", "",
             "Written by `python reproduce/seeds.py` from the sweep rows; see its docstring for the",
             "win rule (difference of the means larger than the sum of the two deviations).", ""]
    by_table: dict[tuple, list[tuple]] = defaultdict(list)
    for cell in summary:
        by_table[(cell[0], cell[1], cell[2], cell[6])].append(cell)
    for (model, dataset, schedule, recipe), cells in sorted(by_table.items()):
        d = dense.get((model, dataset, schedule))
        lines += [f"## {model} on {dataset} ({schedule} schedule), fine-tuning: {recipe}", "",
                  f"Dense test accuracy: {_pm(d)}.", ""]
        head = ["budget", "alloc", "structure", "method", "seeds", "acc no FT %", "acc FT %",
                "call, no FT", "call, FT", "paired diff. FT (pts)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cell in sorted(cells, key=lambda c: (c[3], c[4], c[5])):
            ms = summary[cell]
            ref = ms.get(REFERENCE)
            for method in sorted(ms, key=lambda m: (m == REFERENCE, m)):
                e = ms[method]
                calls = ["-", "-", "-"] if method == REFERENCE or ref is None else [
                    *(CALL_TEXT[verdict(e[k], ref[k])] for k in METRICS),
                    _pm_diff(paired_difference(rows, cell, method, "acc_ft"))]
                lines.append("| " + " | ".join([cell[3], cell[4], cell[5], method, ",".join(map(str, e["seeds"])),
                                                 _pm(e["acc_after"]), _pm(e["acc_ft"]), *calls]) + " |")
        lines.append("")
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"no sweep results at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jsonl", type=Path, default=DEFAULT_JSONL, help="sweep results (JSON lines)")
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write (default: print)")
    args = p.parse_args(argv)
    text = render(read_rows(args.jsonl))
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
