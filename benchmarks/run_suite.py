#!/usr/bin/env python
"""Per-layer decomposition benchmark: the C++ core against pure-torch ADMM.

    python benchmarks/run_suite.py                 # full suite (~10 min on 2 cores)
    python benchmarks/run_suite.py --quick         # tiny shapes, < 30 s (CI smoke test)
    python benchmarks/run_suite.py --shapes vgg16.fc7 512x4608 --out /tmp/res

Writes <out>/decompose_cpu.md (tables + machine info + targets), decompose_cpu.json
(every number) and decompose_cpu.png (time vs shape, one line per backend, log
scale).  See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from harness import LABELS, CaseResult, Run, summarize  # noqa: E402
from shapes import FULL, QUICK, STRUCTURED, Case, select, synthetic_weight  # noqa: E402

#: Final errors of two backends "agree" when within this relative difference.
ERR_AGREE = 0.01
#: Speed/memory targets (2 CPU cores, float32).
TARGET_VS_NAIVE = 10.0
TARGET_VS_TORCH = 2.0
TARGET_FLOOR_MULT = 2.0
TARGET_MEM_MULT = 4.0


def solver_settings(case: Case) -> tuple[int, int]:
    """(p, power_iters) the solvers use for this case: subspace size and power
    iterations per L-step, read from lowrank_sparse._validate when available."""
    oversample, power_iters = 8, 1
    try:
        from lowrank_sparse import _validate as v

        oversample = int(getattr(v, "OVERSAMPLE", oversample))
        f = v.AdmmSpec.__dataclass_fields__.get("power_iters")
        if f is not None and isinstance(f.default, int):
            power_iters = f.default
    except (ImportError, AttributeError):
        pass
    return min(case.rank + oversample, case.m, case.n), power_iters


def run_naive(case: Case, W: np.ndarray, args: argparse.Namespace, repeats: int,
              ref_iters: Optional[int], log: Any) -> dict[str, dict[str, Any]]:
    """The naive reference (full SVD per iteration).  A probe of ``probe`` iterations
    measures its cost; when converging would exceed --naive-budget seconds the probe
    is kept (marked partial) and its total is extrapolated to torch's iteration count.
    Layers above --naive-max-entries are not run at all (one full SVD takes minutes)."""
    if case.m * case.n > args.naive_max_entries:
        log(f"  {'torch_fullsvd':14s} skipped: {case.m}x{case.n} > --naive-max-entries")
        return {}

    def one(cap: Optional[int]) -> Run:
        r = harness.run_once(case, W, "torch_fullsvd", tol=args.tol, max_iter=cap)
        tag = " (partial)" if r.partial else ""
        log(f"  {'torch_fullsvd':14s} {r.seconds:8.3f} s  it={r.iterations:4d}  err={r.rel_error:.5f}{tag}")
        harness.clear()
        return r

    if args.quick:
        return {"torch_fullsvd": summarize([one(None) for _ in range(repeats)], ref_iters)}
    probe_iters = min(1 if case.m * case.n > 4_000_000 else 2, case.max_iter - 1)
    probe = one(probe_iters)
    need = probe.per_iter * (ref_iters or case.max_iter)
    if need > args.naive_budget:
        return {"torch_fullsvd": summarize([probe], ref_iters)}
    nrep = repeats if need * repeats <= args.naive_budget else 1
    return {"torch_fullsvd": summarize([one(None) for _ in range(nrep)], ref_iters)}


def run_case(case: Case, backends: list[str], args: argparse.Namespace, log: Any) -> CaseResult:
    W = synthetic_weight(case.m, case.n, seed=args.seed)
    p, q = solver_settings(case)
    floor = harness.gemm_floor(case, p, q, repeats=5 if args.quick else 7)
    res = CaseResult(case=dict(case.__dict__, label=case.label, shape=case.shape), floor=floor)
    res.floor["p"] = p
    res.floor["power_iters"] = q

    small = case.m * case.n <= 2_000_000
    repeats = args.repeats if args.repeats else (1 if args.quick else 3 if small else 1)
    fast = [b for b in backends if b != "torch_fullsvd"]
    runs: dict[str, list[Run]] = {b: [] for b in fast}
    for _ in range(repeats):  # interleaved, so load drifts hit every backend alike
        for b in fast:
            r = harness.run_once(case, W, b, tol=args.tol)
            runs[b].append(r)
            log(f"  {b:14s} {r.seconds:8.3f} s  it={r.iterations:4d}  err={r.rel_error:.5f}")
            harness.clear()
    ref_iters = runs["torch"][-1].iterations if "torch" in runs else None
    for b in fast:
        res.runs[b] = summarize(runs[b])

    # The floor ratio from interleaved pairs (floor, native solve): on a shared machine the
    # GEMM speed drifts with the load, so each native time is divided by a floor timed
    # right before it and the median ratio is reported (the floor above, timed once at
    # the start of the case, is kept for the table).
    if "native" in runs and args.floor_pairs > 0 and case.m * case.n >= 100_000:
        pairs = []
        for _ in range(args.floor_pairs):
            f = harness.gemm_floor(case, p, q, repeats=5)["seconds"]
            rn = harness.run_once(case, W, "native", tol=args.tol)
            pairs.append({"floor_seconds": f, "native_per_iter": rn.per_iter, "ratio": rn.per_iter / f})
            log(f"  pair: floor {f * 1e3:8.2f} ms  native {rn.per_iter * 1e3:8.2f} ms/iter  "
                f"ratio {rn.per_iter / f:.2f}")
            harness.clear()
        res.floor["pairs"] = pairs
        res.floor["paired_ratio"] = statistics.median(pp["ratio"] for pp in pairs)

    if "torch_fullsvd" in backends:
        res.runs.update(run_naive(case, W, args, repeats, ref_iters, log))

    # agreement of final errors (runs that did all their iterations)
    errs = {b: d["rel_error"] for b, d in res.runs.items() if not d["partial"]}
    ref = errs.get("native", next(iter(errs.values()), float("nan")))
    for b, e in errs.items():
        dev = abs(e - ref) / max(ref, 1e-12)
        res.runs[b]["err_vs_native"] = dev
        if dev > ERR_AGREE:
            res.notes.append(f"final error of {b} ({e:.5f}) differs from native ({ref:.5f}) by {100 * dev:.1f}%")
    iters = {b: d["iterations"] for b, d in res.runs.items() if not d["partial"]}
    if len(set(iters.values())) > 1:
        res.notes.append("iterations differ: " + ", ".join(f"{b}={i}" for b, i in iters.items()))

    # peak memory, each (case, backend) in a fresh process (quick: one process)
    if args.memory:
        mem_backends = [b for b in backends if b in args.memory_backends]
        reqs = [
            {"case": case.__dict__, "backend": b, "tol": args.tol, "seed": args.seed,
             "max_iter": min(case.max_iter, args.memory_iters)}
            for b in mem_backends
        ]
        recs: list[dict[str, Any]] = []
        if args.quick:
            recs = harness.memory_probe(reqs, args.threads)
        else:
            for rq in reqs:
                recs += harness.memory_probe([rq], args.threads)
        for rec in recs:
            res.memory[rec["backend"]] = rec
            log(f"  mem {rec['backend']:10s} extra {rec['extra_bytes'] / 2**20:8.1f} MiB "
                f"({rec['extra_bytes'] / case.weight_bytes:.2f}x W; first solve in the process "
                f"{rec.get('first_extra_bytes', 0) / case.weight_bytes:.2f}x W)")
    return res


# ----------------------------------------------------------------------------- reporting
def _fmt_t(x: Optional[float]) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x * 1e3:.2f} ms"


def total_seconds(d: dict[str, Any]) -> tuple[float, bool]:
    """(total time, estimated?) of a backend's run."""
    if d.get("partial") and "seconds_est" in d:
        return d["seconds_est"], True
    return d["seconds"], False


def evaluate_targets(results: list[CaseResult]) -> list[dict[str, Any]]:
    """One record per (target, case): value, threshold, met."""
    out: list[dict[str, Any]] = []
    for r in results:
        c = r.case
        nat = r.runs.get("native")
        if nat is None:
            continue
        label = c["label"]
        if c["target"]:
            for other, thr in (("torch_fullsvd", TARGET_VS_NAIVE), ("torch", TARGET_VS_TORCH)):
                d = r.runs.get(other)
                if d is None:
                    continue
                t_o, est = total_seconds(d)
                speed = t_o / nat["seconds"]
                agree = d.get("err_vs_native", None)
                equal_err = agree is not None and agree <= ERR_AGREE
                out.append({
                    "target": f"native >= {thr:g}x faster than {LABELS[other]}",
                    "case": label, "value": f"{speed:.1f}x" + (" (est.)" if est else ""),
                    "met": speed >= thr and (equal_err or est),
                    "note": "" if equal_err else (
                        "naive run partial: total extrapolated from its s/iter x torch's iterations"
                        if est else "final errors differ > 1%"),
                })
        if c["m"] * c["n"] < 100_000:
            continue  # tiny (--quick) shapes: fixed overheads dominate, no target applies
        mult = nat["per_iter"] / r.floor["seconds"]
        note = ""
        if "paired_ratio" in r.floor:
            ratios = [pp["ratio"] for pp in r.floor["pairs"]]
            note = (f"median of {len(ratios)} interleaved (floor, native) pairs, ratios "
                    f"{min(ratios):.2f}-{max(ratios):.2f}; against the floor timed once at the case's "
                    f"start: {mult:.2f}x")
            mult = r.floor["paired_ratio"]
        out.append({"target": f"native s/iter <= {TARGET_FLOOR_MULT:g}x GEMM floor", "case": label,
                    "value": f"{mult:.2f}x", "met": mult <= TARGET_FLOOR_MULT, "note": note})
        mem = r.memory.get("native")
        if mem is not None:
            mm = mem["extra_bytes"] / mem["weight_bytes"]
            out.append({"target": f"native peak extra memory <= {TARGET_MEM_MULT:g}x W", "case": label,
                        "value": f"{mm:.2f}x", "met": mm <= TARGET_MEM_MULT,
                        "note": ("first solve in a fresh process (one-time thread pools and "
                                 f"BLAS buffers included): {mem['first_extra_bytes'] / mem['weight_bytes']:.2f}x"
                                 if "first_extra_bytes" in mem else "")})
    return out


def markdown(results: list[CaseResult], meta: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    m = meta["machine"]
    lines = [
        "# Per-layer decomposition: C++ core vs pure-torch ADMM (CPU)",
        "",
        *([] if meta.get("complete", True) else ["**Incomplete run: the cases below are those finished when it was stopped.**", ""]),
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; wall time of the suite: {meta['suite_seconds']:.0f} s  ",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs (shared), threads used: {m['threads']} "
        f"(torch {meta['threads']['torch']}, BLAS {meta['threads']['blas']}, core {meta['threads']['core']})  ",
        f"Load average (1/5/15 min) at start: {m['load_avg_start']}, at end: {meta['load_avg_end']}  ",
        f"Python {m['python']}, torch {m['torch']} (BLAS: {m['torch_blas']}), numpy {m['numpy']}, "
        f"scipy {m['scipy']}  ",
        f"BLAS seen by threadpoolctl: {'; '.join(m['blas'])}  ",
        f"CUDA: {m['cuda'] or 'not available (backend (d) not run)'}",
        "",
        f"Settings: float32, synthetic weights with trained-like spectra (benchmarks/shapes.py), tol={meta['tol']}, "
        f"rank = 10% of min(m, n) capped at 64, density {results[0].case['density'] if results else '-'}; "
        "times are medians over interleaved repeats (`rep`).  `x floor` = seconds per iteration / GEMM floor "
        "(SciPy sgemm time of the products one iteration needs: see README).  `speedup` = total time of the "
        "backend / total time of native.  Peak memory = extra resident memory of one solve (VmHWM after "
        "clear_refs; the second solve of the shape in a fresh process, malloc returning freed blocks), as a "
        "multiple of W's size; in brackets after it the first solve in that process, which also pays one-time "
        "thread-pool and BLAS-buffer costs (see README).  `(est.)`: the naive run was stopped early and its total "
        "is its s/iter x the torch backend's iteration count.",
        "",
        "| layer | shape | r | S | backend | rep | iters | conv | total s | s/iter | x floor | speedup | rel. error | peak mem (x W) |",
        "|---|---|---:|---|---|---:|---:|:-:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r.case
        nat = r.runs.get("native")
        for b, d in r.runs.items():
            tot, est = total_seconds(d)
            sp = "-" if nat is None else f"{tot / nat['seconds']:.1f}x"
            mem = r.memory.get(b)
            mem_s = "-" if mem is None else (
                f"{mem['extra_bytes'] / 2**20:.0f} MiB ({mem['extra_bytes'] / mem['weight_bytes']:.2f})"
                + (f" [first {mem['first_extra_bytes'] / mem['weight_bytes']:.2f}]" if "first_extra_bytes" in mem else ""))
            it = f"{d['iterations']}" + (f" of {d.get('iterations_est')}" if d["partial"] else "")
            err = f"{d['rel_error']:.5f}" + (" (partial)" if d["partial"] else "")
            if d.get("err_vs_native", 0.0) > ERR_AGREE:
                err += " **!**"
            lines.append(
                f"| {c['name']} | {c['shape']} | {c['rank']} | {c['structure']} {c['density']:g} | {LABELS[b]} | "
                f"{d['repeats']} | {it} | {'y' if d['converged'] else 'n'} | {_fmt_t(tot)}{' (est.)' if est else ''} | "
                f"{_fmt_t(d['per_iter'])} | {d['per_iter'] / r.floor['seconds']:.2f} | {sp} | {err} | {mem_s} |"
            )
    lines += ["", "## GEMM floor per iteration", "",
              "GFLOP: floating-point operations of the iteration's GEMMs, 2 x M*N*K / 1e9 (FLOPs = 2 x MACs).", "",
              "| layer | shape | p | GFLOP | sgemm s | sgemm GFLOP/s | torch.mm s | torch.mm GFLOP/s |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f = r.floor
        lines.append(f"| {r.case['name']} | {r.case['shape']} | {f['p']} | {f['gflop']:.2f} | {_fmt_t(f['seconds'])} | "
                     f"{f['gflops']:.1f} | {_fmt_t(f['seconds_torch'])} | {f['gflops_torch']:.1f} |")
    if results:
        lines += ["", "GEMMs counted per iteration (first case): " + "; ".join(results[0].floor["gemms"])]
    lines += ["", "## Targets", "", "| target | case | value | met | note |", "|---|---|---:|:-:|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['case']} | {t['value']} | {'yes' if t['met'] else '**no**'} | {t['note']} |")
    phased = [(r, r.runs["native"]["phases"]) for r in results
              if "phases" in r.runs.get("native", {})]
    if phased:
        lines += ["", "## Native solver: time per iteration by phase (ms)", "",
                  "Wall time per iteration of each phase (csrc/admm.cpp timers, `info.extra[\"timing\"]`; "
                  "medians over the repeats).  `products`: the two GEMMs with A of the truncated SVD; "
                  "`QR Y`: CholeskyQR2 of the (m, p) panel; `SVD B`: SVD of the (p, n) panel B (from its "
                  "Gram B B^T, or the QR of B^T and gesdd of the p x p factor when B is ill-conditioned), "
                  "Vb and U; `P3`: L' tiles + S-step input (+ top-k band counts), of which `L GEMM` "
                  "the tile GEMMs' thread-seconds / threads; `select`: the S-step selection; `P0+P4`: the "
                  "L-step input pass (when not formed by P4) and the residual pass; `other`: the rest.  "
                  "`floor`: the sgemm floor per iteration.  Counters (whole solve): band = top-k cuts found "
                  "in P3's band, spec = iterations whose L-step input P4 had formed, fb = QR fallbacks.",
                  "",
                  "| layer | shape | total | floor | products | QR Y | SVD B | P3 | L GEMM | select | P0+P4 | other | band / spec / fb |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r, ph in phased:
            thr = max(1, int(meta["threads"]["core"]))
            named = ["svd_products", "svd_qr", "svd_small", "lform", "project", "elementwise"]
            other = ph.get("total", 0.0) - sum(ph.get(k, 0.0) for k in named)
            ms = lambda x: f"{1e3 * x:.2f}"  # noqa: E731
            cnt = " / ".join(f"{int(ph.get(k, 0))}" for k in ("band_hits", "speculation_hits", "qr_fallbacks"))
            lines.append(
                f"| {r.case['name']} | {r.case['shape']} | {ms(ph.get('total', 0))} | {ms(r.floor['seconds'])} | "
                f"{ms(ph.get('svd_products', 0))} | {ms(ph.get('svd_qr', 0))} | {ms(ph.get('svd_small', 0))} | "
                f"{ms(ph.get('lform', 0))} | {ms(ph.get('lform_gemm_thread', 0) / thr)} | {ms(ph.get('project', 0))} | "
                f"{ms(ph.get('elementwise', 0))} | {ms(other)} | {cnt} |")
    notes = [f"- {r.case['label']}: {n}" for r in results for n in r.notes]
    if notes:
        lines += ["", "## Flags", ""] + notes
    return "\n".join(lines) + "\n"


def plot(results: list[CaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = sorted(results, key=lambda r: (r.case["m"] * r.case["n"], r.case["structure"]))
    x = np.arange(len(rs))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, key, title in ((axes[0], "per_iter", "seconds per iteration"), (axes[1], "total", "total seconds")):
        for b in harness.BACKENDS:
            ys = []
            for r in rs:
                d = r.runs.get(b)
                if d is None:
                    ys.append(np.nan)
                else:
                    ys.append(d["per_iter"] if key == "per_iter" else total_seconds(d)[0])
            if not np.all(np.isnan(ys)):
                ax.plot(x, ys, marker="o", label=LABELS[b])
        if key == "per_iter":
            ax.plot(x, [r.floor["seconds"] for r in rs], "k--", label="GEMM floor (sgemm)")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([r.case["shape"] + ("" if r.case["structure"] == "unstructured" else f"\n{r.case['structure']}")
                            for r in rs], rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("L+S decomposition per layer, float32, 2 threads (shapes sorted by size)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Per-layer decomposition benchmark (native vs torch).")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, < 30 s (CI)")
    ap.add_argument("--shapes", nargs="*", help="case names or MxN shapes (default: all)")
    ap.add_argument("--no-structured", dest="structured", action="store_false",
                    help="skip the row/channel-structured runs")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=0, help="repeats per backend (0: 3 for small, 1 for large)")
    ap.add_argument("--backends", nargs="*", default=None, help="subset of " + ", ".join(harness.BACKENDS))
    ap.add_argument("--naive-budget", type=float, default=20.0,
                    help="seconds the full-SVD reference may take per case before it is cut short")
    ap.add_argument("--naive-max-entries", type=int, default=17_000_000,
                    help="larger layers skip the full-SVD reference (default: up to 4096x4096)")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--memory-backends", nargs="*", default=["native", "torch"])
    ap.add_argument("--memory-iters", type=int, default=4, help="iterations of each memory probe")
    ap.add_argument("--name", default="decompose_cpu", help="output file stem")
    ap.add_argument("--floor-pairs", type=int, default=3,
                    help="interleaved (GEMM floor, native solve) pairs per case for the floor ratio "
                         "(0: ratio against the floor timed once at the case's start)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    threads = harness.set_threads(args.threads)
    machine = harness.machine_info(args.threads)
    backends = harness.available_backends()
    if args.backends:
        bad = set(args.backends) - set(harness.BACKENDS)
        if bad:
            ap.error(f"unknown backends {sorted(bad)}")
        backends = [b for b in backends if b in args.backends]
    cases = QUICK if args.quick else FULL + (STRUCTURED if args.structured else [])
    cases = select(cases, args.shapes)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"machine: {machine['cpu']}, load {machine['load_avg_start']}, threads {threads}, backends {backends}")
    harness.warmup(backends)
    results: list[CaseResult] = []
    for case in cases:
        log(f"{case.label}: rank {case.rank}, density {case.density}, max_iter {case.max_iter}")
        results.append(run_case(case, backends, args, log))
        write_outputs(results, args, argv, t_start, machine, threads, backends, final=False)
    write_outputs(results, args, argv, t_start, machine, threads, backends, final=True)
    log(f"wrote {args.out / args.name}.{{md,json,png}} in {time.perf_counter() - t_start:.0f} s")
    return 0


def write_outputs(results: list[CaseResult], args: argparse.Namespace, argv: Optional[list[str]],
                  t_start: float, machine: dict[str, Any], threads: dict[str, Any],
                  backends: list[str], final: bool) -> None:
    """Write md + json after every case (a cut-short run keeps what it measured) and
    the plot at the end."""
    targets = evaluate_targets(results)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "suite_seconds": time.perf_counter() - t_start,
        "machine": machine,
        "threads": threads,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "tol": args.tol,
        "backends": backends,
        "complete": final,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(markdown(results, meta, targets))
    payload = {"meta": meta, "cases": [harness.to_json(r) for r in results], "targets": targets}
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=1, default=harness.to_json))
    plot(results, args.out / f"{args.name}.png")


if __name__ == "__main__":
    raise SystemExit(main())
