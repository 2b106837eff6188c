#!/usr/bin/env python
"""Render the sweep's JSON lines as Markdown tables and accuracy-vs-parameters plots.

    python reproduce/tables.py                       # docs/results/results.jsonl -> results.md + PNGs
    python reproduce/tables.py --jsonl X.jsonl --out-dir /tmp/r

One table per network (the last "ok" row of every key wins), a storage table for the
additive-quantization rows, a per-budget comparison of the methods, the runs that failed,
and the cells of the full grid (4 networks x 4 budgets x 3 methods x 3 allocations) not run
yet.  Numbers are printed as measured; nothing is filtered.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSONL = REPO / "docs" / "results" / "results.jsonl"
KEY_FIELDS = ("model", "dataset", "schedule", "seed", "budget", "method", "allocation", "protocol")
#: AQ settings of rows written before the sweep recorded them in the key
DEFAULT_AQ = {"M": 2, "K": 256, "d": 8}
GRID_MODELS = ("vgg16", "alexnet", "googlenet", "mobilenet_v2")
GRID_BUDGETS = ("p50", "p33", "p20", "f25")
GRID_METHODS = ("lowrank_sparse", "rank_only", "sparse_only")
GRID_ALLOCS = ("alds", "enc", "uniform")
METHOD_ORDER = {"dense": 0, "lowrank_sparse": 1, "rank_only": 2, "sparse_only": 3, "aq": 4}
METHOD_TEXT = {"lowrank_sparse": "L + S (this library)", "rank_only": "rank-only SVD", "sparse_only": "sparse-only pruning"}
BUDGET_TEXT = {"p50": "50% params", "p33": "33% params", "p20": "20% params (5x)", "f25": "25% MACs"}
TITLES = {
    "vgg16": "VGG-16 (32x32, BN)",
    "alexnet": "AlexNet (32x32)",
    "googlenet": "GoogLeNet (32x32)",
    "mobilenet_v2": "MobileNetV2 (ImageNet weights)",
    "small_cnn": "SmallCNN",
    "mlp": "MLP",
}


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def is_aq(r: dict[str, Any]) -> bool:
    m = str(r.get("method", ""))
    return m == "aq" or m.endswith("+aq")


def structure_of(r: dict[str, Any]) -> str:
    """Structure of S; rows written before the sweep recorded it were unstructured (or have
    no S: dense, aq)."""
    s = r.get("structure")
    if s is not None:
        return str(s)
    return "-" if r.get("method") in ("dense", "aq") else "unstructured"


def aq_text(r: dict[str, Any]) -> str:
    """"M=2,K=256,d=8" for AQ rows, "-" otherwise."""
    if not is_aq(r):
        return "-"
    aq = r.get("aq") or DEFAULT_AQ
    return ",".join(f"{k}={aq[k]}" for k in ("M", "K", "d", "beam", "iters") if k in aq)


def full_key(r: dict[str, Any]) -> tuple:
    """KEY_FIELDS + structure + AQ setting + fine-tuning recipe (the sweep's row identity)."""
    return (*(r.get(f) for f in KEY_FIELDS), structure_of(r), aq_text(r), r.get("ft_recipe", "ce"))


def latest(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(last ok row per key in first-seen order, failed rows whose key has no ok row)."""
    ok: dict[tuple, dict[str, Any]] = {}
    failed: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        k = full_key(r)
        if r.get("status") == "ok":
            ok[k] = r
            failed.pop(k, None)
        elif k not in ok:
            failed[k] = r
    return list(ok.values()), list(failed.values())


# ----------------------------------------------------------------------------- formatting


def pct(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.3f}"


def num(x: Optional[float], fmt: str = "{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def delta(x: Optional[float], ref: Optional[float]) -> str:
    if x is None or ref is None:
        return "-"
    return f"{100 * (x - ref):+.2f}"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def sort_key(r: dict[str, Any]) -> tuple:
    b = r.get("budget", "-")
    border = GRID_BUDGETS.index(b) if b in GRID_BUDGETS else (-1 if b == "-" else 99)
    m = r.get("method", "")
    base = m[:-3] if m.endswith("+aq") else m
    alloc = r.get("allocation", "-")
    aorder = GRID_ALLOCS.index(alloc) if alloc in GRID_ALLOCS else -1
    return (r.get("protocol", ""), border, b, aorder, METHOD_ORDER.get(base, 9), m.endswith("+aq"))


def lat(r: dict[str, Any]) -> Optional[float]:
    l = r.get("latency")
    return None if not l else l.get("median_ms")


def lat_min(r: dict[str, Any]) -> Optional[float]:
    l = r.get("latency")
    return None if not l else l.get("min_ms")


#: Paired measurements of reproduce/latency.py (key -> record), filled by render().
PAIRED: dict[tuple, dict[str, Any]] = {}


def lat_cell(r: dict[str, Any], dense: Optional[dict[str, Any]]) -> str:
    """Paired latency (reproduce/latency.py) when measured: "compressed vs dense ms (median of
    per-round ratios)"; otherwise the sweep's own "median / min (min ratio to dense)"."""
    # paired records carry no structure: they belong to the unstructured rows
    pr = PAIRED.get(tuple(r.get(f) for f in KEY_FIELDS)) if structure_of(r) in ("-", "unstructured") else None
    if pr is not None:
        fmt = "{:.0f}" if pr["dense_median_ms"] >= 10 else "{:.2f}"
        return f"{fmt.format(pr['median_ms'])} vs {fmt.format(pr['dense_median_ms'])} (**{pr['median_ratio']:.2f}**)"
    l, lm = lat(r), lat_min(r)
    if l is None:
        return "-"
    ref = None if dense is None else lat_min(dense)
    return f"{num(l)} / {num(lm)} ({ratio(lm, ref)})"


def command(r: dict[str, Any]) -> str:
    c = r.get("command", "")
    if r.get("method") == "dense":  # rows written before "dense" became a method of its own
        c = c.replace(" --budgets -", "").replace(" --allocations -", "")
    return f"`{c}`"


# ----------------------------------------------------------------------------- tables


def method_label(r: dict[str, Any]) -> str:
    """The method, with its S structure and its fine-tuning recipe where not the default."""
    st = structure_of(r)
    out = r["method"] if st in ("-", "unstructured") else f"{r['method']} ({st} S)"
    return out + (" + distill FT" if r.get("ft_recipe", "ce") != "ce" else "")


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    dense = next((r for r in rows if r["method"] == "dense"), None)
    acc0 = None if dense is None else dense.get("acc_before")
    head = ["budget", "method", "alloc", "params kept", "MACs kept", "acc no FT %", "acc FT %", "FT vs dense (pts)",
            "latency ms (x dense)", "compress s", "max layer err", "seed", "device", "schedule", "command"]
    body = []
    for r in sorted(rows, key=sort_key):
        if is_aq(r):
            continue
        pb, mb = r.get("params_before"), r.get("macs_before")
        body.append([
            BUDGET_TEXT.get(r["budget"], r["budget"]), method_label(r),
            r["allocation"],
            ratio(r.get("params_after"), pb), ratio(r.get("macs_after"), mb),
            pct(r.get("acc_after")), pct(r.get("acc_ft")), delta(r.get("acc_ft"), acc0),
            lat_cell(r, dense),
            num(r.get("compress_seconds")), num(r.get("max_layer_error"), "{:.3f}"),
            str(r.get("seed")), r.get("device", "-"), r.get("schedule", "-"), command(r),
        ])  # fmt: skip
    return md_table(head, body)


def grid_table(rows: list[dict[str, Any]]) -> Optional[str]:
    """The budget x allocation grid at a glance: one line per (budget, allocation), one
    column per method with "acc no FT / acc FT" (%), the best FT of the line in bold, and
    the code version (commit) of its rows.  Unstructured S, no AQ; None if no such rows."""
    cells: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if is_aq(r) or r["method"] not in GRID_METHODS or structure_of(r) not in ("-", "unstructured"):
            continue
        cells[(r["budget"], r["allocation"])][r["method"]] = r
    if not cells:
        return None
    head = ["budget", "alloc"] + [METHOD_TEXT.get(m, m) for m in GRID_METHODS] + ["commit"]
    body = []
    for (b, a) in sorted(cells, key=lambda k: sort_key({"budget": k[0], "allocation": k[1]})):
        ms = cells[(b, a)]
        fts = [ms[m].get("acc_ft") for m in GRID_METHODS if m in ms and ms[m].get("acc_ft") is not None]
        best = max(fts) if fts else None
        line = [BUDGET_TEXT.get(b, b), a]
        for m in GRID_METHODS:
            r = ms.get(m)
            if r is None:
                line.append("-")
                continue
            ft = pct(r.get("acc_ft"))
            if best is not None and r.get("acc_ft") == best:
                ft = f"**{ft}**"
            line.append(f"{pct(r.get('acc_after'))} / {ft}")
        line.append(", ".join(sorted({str(r.get("commit", "?"))[:7] for r in ms.values()})))
        body.append(line)
    return md_table(head, body)


def fidelity_table(rows: list[dict[str, Any]]) -> str:
    head = ["protocol", "budget", "method", "alloc", "params kept", "MACs kept", "top-1 agreement %",
            "KL (nats)", "top-1 acc vs labels %", "latency ms (x dense)", "compress s", "max layer err", "seed",
            "device", "command"]
    dense_rows = {r["protocol"]: r for r in rows if r["method"] == "dense"}
    body = []
    for r in sorted(rows, key=sort_key):
        f = r.get("fidelity") or {}
        body.append([
            {"overlap": "overlap (cal 20 / eval same 20)", "split": "split (cal 10 / eval other 10)"}.get(
                r["protocol"], r["protocol"]),
            BUDGET_TEXT.get(r["budget"], r["budget"]), r["method"], r["allocation"],
            ratio(r.get("params_after"), r.get("params_before")), ratio(r.get("macs_after"), r.get("macs_before")),
            pct(f.get("top1_agreement"), 0), num(f.get("kl"), "{:.4f}"), pct(f.get("top1_accuracy"), 0),
            lat_cell(r, dense_rows.get(r["protocol"])),
            num(r.get("compress_seconds")), num(r.get("max_layer_error"), "{:.3f}"),
            str(r.get("seed")), r.get("device", "-"), command(r),
        ])  # fmt: skip
    return md_table(head, body)


def aq_bits(r: dict[str, Any]) -> Optional[float]:
    """Bits per quantized value of an AQ row: M * ceil(log2 K) / d."""
    if not is_aq(r):
        return None
    aq = r.get("aq") or DEFAULT_AQ
    return aq["M"] * math.ceil(math.log2(aq["K"])) / aq["d"]


def storage_table(rows: list[dict[str, Any]]) -> Optional[str]:
    aq_rows = [r for r in rows if is_aq(r)]
    if not aq_rows:
        return None
    dense = next((r for r in rows if r["method"] == "dense"), None)
    base_bytes = None if dense is None else dense.get("file_bytes")
    picked = [dense] if dense else []
    for r in sorted(aq_rows, key=lambda r: (r["method"] != "aq", sort_key(r), structure_of(r), aq_text(r))):
        if r["method"].endswith("+aq"):
            inner = r["method"][:-3]
            picked += [x for x in rows if x["method"] == inner and x["budget"] == r["budget"]
                       and x["allocation"] == r["allocation"] and structure_of(x) == structure_of(r)]
        picked.append(r)
    head = ["variant", "budget", "alloc", "S structure", "params kept", "AQ (M, K, d)", "bits / quantized value",
            "file bytes", "x smaller than dense file", "of which header / indices", "acc no FT %", "acc FT %",
            "what 'FT' is", "command"]
    body = []
    seen = set()
    for r in picked:
        k = full_key(r)
        if k in seen:
            continue
        seen.add(k)
        q = is_aq(r)
        # the saved file when the row has one (AQ rows of sweeps before the file was written:
        # lowrank_sparse.quant.storage_bytes, marked with *)
        size, star = r.get("file_bytes"), ""
        if size is None and q:
            size, star = r.get("storage_bytes"), "*"
        fr = r.get("file_report") or {}
        aq = r.get("aq") or (DEFAULT_AQ if q else None)
        bits = aq_bits(r)
        body.append([
            r["method"], r.get("budget", "-"), r.get("allocation", "-"), structure_of(r),
            ratio(r.get("params_after"), r.get("params_before")),
            f"({aq['M']}, {aq['K']}, {aq['d']})" if aq else "-", "-" if bits is None else f"{bits:g}",
            f"{size:,d}{star}" if size else "-", ratio(base_bytes, size) if size else "-",
            f"{fr['header']:,d} / {fr['indices']:,d}" if fr else "-",
            pct(r.get("acc_after")), pct(r.get("acc_ft")),
            "codebooks, 1 epoch" if q else ("all weights, 1 epoch" if r["method"] != "dense" else "-"),
            command(r),
        ])  # fmt: skip
    note = ("Storage: *file bytes* = size of the `lowrank_sparse.save` safetensors file (float32 values, sparse "
            "indices packed (schema 3; older rows: int32), BN buffers, header; AQ: packed codes, float16 codebooks, "
            "per-tensor scales). `*`: rows written before AQ files were saved, "
            "`lowrank_sparse.quant.storage_bytes` instead (no header). "
            "`<method>+aq` quantizes the fine-tuned compressed model of that row (every weight: factors, sparse "
            "values, the layers kept dense); 'acc no FT' is right after quantization, 'acc FT' after one epoch "
            "of codebook fine-tuning on the same training subset.")
    return note + "\n\n" + md_table(head, body)


def comparison(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """Per (budget, allocation, protocol) with all three base methods: which wins."""
    cells: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["method"] in GRID_METHODS and structure_of(r) == "unstructured":
            cells[(r["protocol"], r["budget"], r["allocation"])][r["method"]] = r
    out = []
    for (proto, b, a), ms in sorted(cells.items(), key=lambda kv: (kv[0][0], sort_key({"budget": kv[0][1],
                                                                                        "allocation": kv[0][2]}))):
        if len(ms) < 2:
            continue

        def val(r: dict[str, Any]) -> Optional[float]:
            if metric == "fidelity":
                return (r.get("fidelity") or {}).get("kl")
            return r.get(metric)

        vals = {m: val(r) for m, r in ms.items() if val(r) is not None}
        if not vals:
            continue
        best = (min if metric == "fidelity" else max)(vals, key=vals.get)
        if metric == "fidelity":
            parts = ", ".join(f"{m} {v:.4f}" for m, v in sorted(vals.items(), key=lambda kv: kv[1]))
            what = "KL"
        else:
            parts = ", ".join(f"{m} {100 * v:.2f}" for m, v in sorted(vals.items(), key=lambda kv: -kv[1]))
            what = {"acc_after": "accuracy without fine-tuning", "acc_ft": "accuracy after fine-tuning"}[metric]
        pre = f"{proto}, " if proto != "standard" else ""
        out.append(f"- {pre}{BUDGET_TEXT.get(b, b)}, {a}: best {what}: **{best}** ({parts})")
    return out


def missing_cells(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    have = {(r["model"], r["budget"], r["method"], r["allocation"]) for r in rows}
    out: dict[str, list[str]] = {}
    for m in GRID_MODELS:
        miss = [f"{b}/{me}/{a}" for b in GRID_BUDGETS for a in GRID_ALLOCS for me in GRID_METHODS
                if (m, b, me, a) not in have]
        out[m] = miss
    return out


# ----------------------------------------------------------------------------- plots


def plot_model(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["method"] in GRID_METHODS and structure_of(r) == "unstructured"]
    if not pts:
        return False
    colors = {"lowrank_sparse": "tab:red", "rank_only": "tab:blue", "sparse_only": "tab:green"}
    markers = {"alds": "o", "enc": "s", "uniform": "^"}
    imagenet = any(r.get("fidelity") for r in rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    dense = [r for r in rows if r["method"] == "dense"]
    if imagenet:
        for proto, ls in (("overlap", "-"), ("split", ":")):
            sel = [r for r in pts if r["protocol"] == proto]
            for r in sel:
                ax.scatter(r["params_after"] / r["params_before"], 100 * r["fidelity"]["top1_agreement"],
                           edgecolors=colors[r["method"]], marker=markers.get(r["allocation"], "x"),
                           facecolors=colors[r["method"]] if proto == "overlap" else "none")
        ax.set_ylabel("top-1 agreement with the original (%)\nfilled: overlap protocol, hollow: split")
    else:
        for r in pts:
            x = r["params_after"] / r["params_before"]
            if r.get("acc_ft") is not None:
                ax.scatter(x, 100 * r["acc_ft"], c=colors[r["method"]], marker=markers.get(r["allocation"], "x"))
            if r.get("acc_after") is not None:
                ax.scatter(x, 100 * r["acc_after"], marker=markers.get(r["allocation"], "x"), facecolors="none",
                           edgecolors=colors[r["method"]])
            if r.get("acc_ft") is not None and r.get("acc_after") is not None:
                ax.plot([x, x], [100 * r["acc_after"], 100 * r["acc_ft"]], c=colors[r["method"]], lw=0.6, alpha=0.5)
        if dense and dense[0].get("acc_before") is not None:
            ax.axhline(100 * dense[0]["acc_before"], c="k", ls="--", lw=0.8, label="dense")
        ax.set_ylabel("test accuracy (%)\nfilled: after 1-epoch fine-tuning, hollow: before")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()]
    handles += [Line2D([], [], color="gray", marker=mk, ls="", label=a) for a, mk in markers.items()]
    if dense and not imagenet:
        handles.append(Line2D([], [], color="k", ls="--", label="dense"))
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_xlabel("parameters kept (fraction of the whole model)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_storage(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Accuracy after fine-tuning vs saved file size (log scale) of the dense model, AQ alone,
    L+S alone and L+S then AQ, for a model with AQ rows; False when there is nothing to plot."""
    pts = [r for r in rows if r.get("acc_ft") is not None or r["method"] == "dense"]
    if not any(is_aq(r) for r in pts):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def size(r: dict[str, Any]) -> Optional[int]:
        return r.get("file_bytes") or (r.get("storage_bytes") if is_aq(r) else None)

    def group(r: dict[str, Any]) -> Optional[str]:
        m = r["method"]
        if m == "dense":
            return "dense"
        if m == "aq":
            return "AQ alone"
        if m == "lowrank_sparse":
            return "L+S"
        if m == "lowrank_sparse+aq":
            return "L+S then AQ"
        return None

    style = {"dense": ("k", "*"), "AQ alone": ("tab:blue", "s"), "L+S": ("tab:green", "o"),
             "L+S then AQ": ("tab:red", "D")}
    marker_fill = {"unstructured": "full", "channel": "left", "row": "bottom", "-": "full"}
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=110)
    for r in pts:
        g, b = group(r), size(r)
        if g is None or not b:
            continue
        acc = r.get("acc_ft") if r["method"] != "dense" else r.get("acc_before")
        if acc is None:
            continue
        c, mk = style[g]
        st = structure_of(r)
        ax.plot(b / 1e3, 100 * acc, marker=mk, color=c, ls="", fillstyle=marker_fill.get(st, "none"), ms=7)
        bits = aq_bits(r)
        label = " ".join(x for x in (r.get("budget", "-") if r.get("budget") != "-" else "",
                                     st if st not in ("-", "unstructured") else "",
                                     f"{bits:g}b" if bits else "") if x)
        if label:
            ax.annotate(label, (b / 1e3, 100 * acc), fontsize=6, xytext=(3, 3), textcoords="offset points")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker=mk, ls="", label=g) for g, (c, mk) in style.items()]
    handles += [Line2D([], [], color="gray", marker="o", ls="", fillstyle=f, label=f"S: {st}")
                for st, f in (("unstructured", "full"), ("channel", "left"), ("row", "bottom"))]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("saved file size (kB, log scale)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    lo = min([100 * (r.get("acc_ft") or 1) for r in pts if group(r)] + [100])
    ax.set_ylim(max(lo - 2, 70), None)
    ax.set_title(title + ": storage vs accuracy (labels: budget, S structure, AQ bits/value)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- document


INTRO = """# Reproduction: low-rank + sparse compression of trained networks

Discussion of these numbers: [analysis.md](analysis.md).

Generated by `python reproduce/tables.py` from `{jsonl}` (one JSON line per run, written by
`reproduce/sweep.py`; see `reproduce/README.md` for the set-up, the commands and what each
column means).  Every number below was measured by the sweep; nothing is copied from the papers.

What the papers report (ImageNet, not available here): Ma et al. (arXiv 1807.10119) up to 4.9x fewer
parameters on VGG-16 / AlexNet / GoogLeNet with little or no accuracy loss; Kim et al. (ENC) VGG-16 at
25% of the MACs (the paper says FLOPs: the same fraction, as FLOPs = 2 x MACs) with +0.7% accuracy.
Here the same comparisons run on real data and real weights that ship in packages: the 32x32
networks trained on Fashion-MNIST (70k real images) with the schedule named in each row, and
torchvision's ImageNet MobileNetV2 measured by fidelity to the original network on 20 real
ImageNet images.

Columns: *params kept* / *MACs kept* = whole-model counts after / before (exact counts from the
modules); *acc no FT* = test accuracy right after compression; *acc FT* = after one epoch of
`lowrank_sparse.train.fine_tune` (lr 0.01, batch 128) on a seeded training subset; *FT vs dense* in
percentage points; *latency* = CPU wall time of a batch-64 forward pass with 2 torch threads. The machine was
shared with up to 7 other jobs on 2 cores, so timings taken minutes apart are not comparable;
where `reproduce/latency.py` has run (bold ratio) the saved compressed model and its dense original
were timed interleaved, round by round: "compressed vs dense median ms (median of the per-round
ratios)". Otherwise the cell shows the sweep's own "median / min ms (min / dense min)", which mixes
different load levels and is only indicative; *compress s* = wall time of
`compress()` (allocation + all per-layer solves); *max layer err* = largest per-layer relative output
error after the activation on the calibration inputs (from the compression report).
"""


def render(rows_all: list[dict[str, Any]], out_dir: Path, jsonl: Path) -> str:
    rows, failed = latest(rows_all)
    PAIRED.clear()
    for rec in read_rows(jsonl.parent / "latency.jsonl"):
        PAIRED[tuple(rec.get(f) for f in KEY_FIELDS)] = rec
    try:
        shown = jsonl.resolve().relative_to(REPO)
    except ValueError:
        shown = jsonl
    parts = [INTRO.format(jsonl=shown)]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    order = [m for m in GRID_MODELS if m in by_model] + sorted(m for m in by_model if m not in GRID_MODELS)
    for m in order:
        mrows = by_model[m]
        dense = next((r for r in mrows if r["method"] == "dense"), None)
        parts.append(f"## {TITLES.get(m, m)}\n")
        if dense is not None:
            desc = f"Source: {dense.get('source', '?')}; data: {dense.get('dataset')}."
            s = dense.get("settings", {})
            if dense.get("fidelity") is None:
                desc += (f" Dense: accuracy {pct(dense.get('acc_before'))}% on {s.get('test_subset')} test images, "
                         f"{dense['params_after']:,d} parameters, {dense['macs_after']:,d} MACs/sample, "
                         f"latency {num(lat(dense))} ms. Calibration: {s.get('calib')} training images; "
                         f"fine-tuning: {s.get('ft_epochs')} epoch on {s.get('ft_subset')} training images.")
            else:
                desc += (f" Dense: {dense['params_after']:,d} parameters, {dense['macs_after']:,d} MACs/sample, "
                         f"top-1 accuracy vs the true labels "
                         + ", ".join(f"{pct((r.get('fidelity') or {}).get('top1_accuracy'), 0)}% ({r['protocol']})"
                                     for r in mrows if r["method"] == "dense")
                         + f", latency {num(lat(dense))} ms. Calibration and evaluation use the 20 foolbox ImageNet "
                         "images: in the overlap protocol the SAME 20 images calibrate and evaluate (optimistic); "
                         "the split protocol calibrates on a seeded 10 and evaluates on the other 10. "
                         "No fine-tuning (no training set).")
            parts.append(desc + "\n")
        gt = None if m == "mobilenet_v2" else grid_table(mrows)
        if gt:
            parts.append("Accuracy % without / with fine-tuning, unstructured S (best after fine-tuning "
                         "in bold; the full rows follow):\n\n" + gt + "\n")
        parts.append(fidelity_table(mrows) if m == "mobilenet_v2" else accuracy_table(mrows))
        parts.append("")
        st = storage_table(mrows)
        if st:
            parts.append(f"### {TITLES.get(m, m)}: storage with additive quantization\n\n{st}\n")
            png = out_dir / f"{m}_storage_vs_acc.png"
            if plot_storage(mrows, png, TITLES.get(m, m)):
                parts.append(f"![{m}: accuracy vs file size]({png.name})\n")
        lines = comparison(mrows, "fidelity") if m == "mobilenet_v2" else (
            comparison(mrows, "acc_after") + comparison(mrows, "acc_ft"))
        if lines:
            parts.append("Method comparison at equal budget and allocation:\n\n" + "\n".join(lines) + "\n")
        png = out_dir / f"{m}_acc_vs_params.png"
        if plot_model(mrows, png, TITLES.get(m, m)):
            parts.append(f"![{m}: accuracy vs parameters]({png.name})\n")
    if failed:
        parts.append("## Runs that failed\n")
        parts.append(md_table(["model", "budget", "method", "alloc", "error", "command"],
                              [[r.get("model", "?"), r.get("budget", "?"), r.get("method", "?"),
                                r.get("allocation", "?"), str(r.get("error", ""))[:200], command(r)]
                               for r in failed]))
        parts.append("")
    miss = missing_cells(rows)
    tried = {(r.get("model"), r.get("budget"), r.get("method"), r.get("allocation")) for r in failed}
    total = len(GRID_MODELS) * len(GRID_BUDGETS) * len(GRID_METHODS) * len(GRID_ALLOCS)
    n_miss = sum(len(v) for v in miss.values())
    parts.append(f"## Coverage of the full grid\n\n{total - n_miss} of {total} cells (4 networks x 4 budgets x "
                 f"3 methods x 3 allocations) have a result; without one:\n")
    for m, cells in miss.items():
        fl = [c for c in cells if (m, *c.split("/")) in tried]
        rest = [c for c in cells if c not in fl]
        if fl:
            parts.append(f"- {m}, failed (see the failed runs above) ({len(fl)}): " + ", ".join(fl))
        if rest:
            parts.append(f"- {m}, not run ({len(rest)}): " + ", ".join(rest))
    parts.append("")
    return "\n".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jsonl", type=Path, default=DEFAULT_JSONL)
    p.add_argument("--out-dir", type=Path, default=None, help="default: the folder of --jsonl")
    args = p.parse_args(argv)
    out_dir = args.out_dir or args.jsonl.parent
    rows = read_rows(args.jsonl)
    if not rows:
        print(f"no rows in {args.jsonl}", file=sys.stderr)
        return 1
    text = render(rows, out_dir, args.jsonl)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(text)
    print(f"wrote {out_dir / 'results.md'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
