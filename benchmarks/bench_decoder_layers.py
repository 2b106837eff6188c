"""Per-layer cost of compressing a Llama-style decoder: seconds per ADMM iteration,
iterations to converge, and peak extra memory of one data-aware (Gram-mode) solve at
the linear shapes of a 7B decoder, on this machine.

These are the figures ``docs/scaling.md`` plans a 7B and a 70B run from.

Cases (Llama-2-7B shapes: hidden 4096, MLP 11008): q/k/v/o 4096x4096, gate/up
11008x4096, down 4096x11008, each at 50 % of its parameters split as the allocator's
middle candidate does (half the budget to S: density 0.25, the rest to rank
r = 0.25 m n / (m + n)).  Weights: power-law spectrum plus outliers
(``shapes.synthetic_weight``); calibration inputs: 2,048 tokens with a decaying
channel scale and a few outlier input channels (transformer-like), as their Gram
matrix G = X X^T / N.  Timed: ``decompose(W, rank, 0.25, gram=G, max_iter=K)`` with
K = ``--iters`` (per-iteration time; the eigenbasis of G, computed once per solve,
is reported separately by a K = 1 run), 2 threads.  The least-squares refit of S on its
support that follows the iterations (``solve/refit.py``: one solve of the kept
columns' Gram block per row, about m k^3 / 3 flops for k kept entries per row) is
timed on its own and subtracted from both runs.  Peak extra memory: VmHWM after
resetting it (``/proc/self/clear_refs``) minus VmRSS before, W and G already built
(glibc's mmap threshold lowered so freed blocks leave the resident set).

How the error falls with the iteration cap (max_iter 10, 25, 50, 100, 300 at tol
1e-4, before and after the refit) is measured on the same layers scaled down 4x in
each dimension (same rank and density fractions), where such runs fit the time:
``--converge``.  ``--no-refit LAYERS`` solves those layers with ``refit=False`` (the
refit's time then estimated from its flops, m k^3 / 3 for k kept entries per row, at
the rate of the layers that ran it).

Run: ``python benchmarks/bench_decoder_layers.py [--iters 4] [--converge]
[--layers "attn q/k/v/o,mlp gate/up"] [--no-refit "mlp down"]``; writes
benchmarks/results/decoder_layers_cpu.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import harness  # noqa: E402
import lowrank_sparse as lrs  # noqa: E402
from shapes import synthetic_weight  # noqa: E402

SHAPES_7B = {"attn q/k/v/o": (4096, 4096), "mlp gate/up": (11008, 4096), "mlp down": (4096, 11008)}
DENSITY = 0.25


def rank_for(m: int, n: int) -> int:
    """Rank that spends the other half of a 50 % budget: 0.25 m n / (m + n)."""
    return int(0.25 * m * n / (m + n))


def gram(n: int, tokens: int, seed: int) -> np.ndarray:
    """(n, n) float64 Gram of transformer-like inputs: decaying channel scale, 0.5 %
    outlier channels 20x larger."""
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(n)) ** -0.3
    scale[rng.choice(n, max(1, n // 200), replace=False)] *= 20.0
    X = (rng.standard_normal((n, tokens)).astype(np.float32) * scale[:, None].astype(np.float32))
    return (X.astype(np.float64) @ X.T.astype(np.float64)) / tokens


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


_REFIT_S: list[float] = []


def _timed_refit() -> None:
    """Time decompose()'s least-squares refit of S on its support separately."""
    import lowrank_sparse.decomposition as D

    inner = D.refit_support

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        _REFIT_S.append(time.perf_counter() - t0)
        return out

    D.refit_support = timed


def solve(W: np.ndarray, G: np.ndarray, rank: int, iters: int, tol: float = 1e-12, refit: bool = True) -> dict:
    """Seconds (total, of which the refit), iterations, converged, error (Gram metric,
    after the refit when it runs) and peak extra bytes of one Gram-mode solve."""
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    _REFIT_S.clear()
    t0 = time.perf_counter()
    r = lrs.decompose(W, rank, DENSITY, gram=G, max_iter=iters, tol=tol, backend="native", refit=refit)
    seconds = time.perf_counter() - t0
    return dict(s=seconds, refit_s=sum(_REFIT_S), iters=int(r.info.iterations), converged=bool(r.info.converged),
                peak=_status("VmHWM") - before, error=float(r.info.extra["error"]),
                error_before_refit=float(r.info.extra.get("error_before_refit", r.info.extra["error"])))


def refit_cost(m: int, n: int) -> float:
    """Flops of the Gram-mode refit: a Cholesky factorisation of k x k per row."""
    return m * (DENSITY * n) ** 3 / 3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--converge", action="store_true")
    ap.add_argument("--layers", default=",".join(SHAPES_7B), help="comma-separated subset of " + ", ".join(SHAPES_7B))
    ap.add_argument("--no-refit", default="", help="layers solved with refit=False (refit time then estimated "
                    "from the flops rate of the layers that ran it)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "decoder_layers_cpu.json"))
    args = ap.parse_args()
    harness.set_threads(2)
    _timed_refit()
    import warnings

    from lowrank_sparse.errors import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)  # capped runs say so; expected here
    lrs.decompose(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), 4, 0.1, max_iter=3)
    rows = []
    layers = [x.strip() for x in args.layers.split(",") if x.strip()]
    no_refit = {x.strip() for x in args.no_refit.split(",") if x.strip()}
    for name in [*layers, *no_refit]:
        if name not in SHAPES_7B:
            ap.error(f"unknown layer {name!r}; choose from {', '.join(SHAPES_7B)}")
    for name in layers:
        m, n = SHAPES_7B[name]
        refit = name not in no_refit
        W = synthetic_weight(m, n, seed=1).astype(np.float32)
        G, r = gram(n, args.tokens, seed=2), rank_for(m, n)
        a = solve(W, G, r, 1, refit=refit)
        b = solve(W, G, r, args.iters + 1, refit=refit)
        admm1, admmk = a["s"] - a["refit_s"], b["s"] - b["refit_s"]
        row = dict(layer=name, m=m, n=n, rank=r, density=DENSITY, setup_plus_1_iter_s=admm1,
                   s_per_iter=(admmk - admm1) / (b["iters"] - 1),
                   refit_s=[a["refit_s"], b["refit_s"]] if refit else None, refit_gflop=refit_cost(m, n) / 1e9,
                   peak_extra_bytes=b["peak"], peak_x_weight=b["peak"] / W.nbytes,
                   weight_bytes=W.nbytes, gram_bytes=G.nbytes)
        if args.converge:
            ms, ns = m // 4, n // 4
            Ws, Gs = synthetic_weight(ms, ns, seed=1).astype(np.float32), gram(ns, args.tokens, seed=2)
            trace = {}
            for k in (10, 25, 50, 100, 300):
                c = solve(Ws, Gs, rank_for(ms, ns), k, tol=1e-4)
                trace[k] = dict(iters=c["iters"], converged=c["converged"], s=c["s"], error=c["error"],
                                error_before_refit=c["error_before_refit"])
            row.update(converge_shape=f"{ms}x{ns}", error_by_max_iter=trace)
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = dict(machine=f"{platform.machine()}, {os.cpu_count()} logical CPUs", threads=2,
               load_avg=os.getloadavg(), tokens=args.tokens, iters=args.iters, rows=rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    rates = [x["refit_gflop"] / statistics.median(x["refit_s"]) for x in rows if x["refit_s"]]
    print("| layer | shape | rank | density | setup + 1 iter s | s / iter | S refit s | peak extra (x W) | "
          "error at max_iter 10 / 25 / 50 / 100 / 300 (shape) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for x in rows:
        conv = "-"
        if "error_by_max_iter" in x:
            conv = " / ".join(f"{t['error']:.4f}" for t in x["error_by_max_iter"].values()) + f" ({x['converge_shape']})"
        if x["refit_s"]:
            refit = f"{statistics.median(x['refit_s']):.0f}"
        else:
            refit = f"~{x['refit_gflop'] / statistics.median(rates):.0f} (est.)" if rates else "not run"
        print(f"| {x['layer']} | {x['m']}x{x['n']} | {x['rank']} | {x['density']} | {x['setup_plus_1_iter_s']:.1f} | "
              f"{x['s_per_iter']:.2f} | {refit} | {x['peak_extra_bytes'] / 2**20:.0f} MiB "
              f"({x['peak_x_weight']:.2f}) | {conv} |")


if __name__ == "__main__":
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # see benchmarks/memprobe.py
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
