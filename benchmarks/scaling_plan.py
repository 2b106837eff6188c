"""Plan a 7B and a 70B decoder's compression from the measured per-layer costs.

Reads ``benchmarks/results/decoder_layers_cpu.json`` (written by
``bench_decoder_layers.py``: seconds per ADMM iteration, setup, refit and peak extra
memory of one Gram-mode solve at Llama-2-7B's linear shapes, 2 threads) and fits three
cost models to it:

* seconds per iteration = 2 m n^2 / F (the (m, n) x (n, n) products with the Gram
  matrix that every iteration makes), F the fitted rate in flop/s;
Shapes that were measured use their measured seconds; the models carry the figures to
the other shapes.

* setup (eigenbasis of G, first iterate, first iteration) = a n^3 + b m n^2, least
  squares over the measured layers;
* refit of S on its support (``solve/refit.py``) = m k^3 / 3 flops at the rate the
  measured refits ran, k = density * n kept entries per row;
* peak extra memory = alpha * 8 m n + beta * 8 n^2 bytes (fp64 copies of W and of G),
  least squares over the measured layers.

Each layer's problem is 50 % of its parameters (density 0.25, rank 0.25 m n / (m + n)),
as in the benchmark.  The tables it prints are the ones in ``docs/scaling.md``.

Run: ``python benchmarks/scaling_plan.py [--iters 50 300] [--markdown]``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "decoder_layers_cpu.json"
DENSITY = 0.25
MIB = 2.0**20


@dataclass(frozen=True)
class Decoder:
    """A Llama-style decoder's linear shapes: (out, in) per layer of one block."""

    name: str
    blocks: int
    layers: dict[str, tuple[int, int]]  # name -> (m, n)
    copies: dict[str, int]  # how many layers of this shape a block has
    stage: dict[str, int]  # sequential stage: 0 q/k/v, 1 o, 2 gate/up, 3 down


LLAMA_7B = Decoder(
    "Llama-2-7B", 32,
    {"q/k/v/o": (4096, 4096), "gate/up": (11008, 4096), "down": (4096, 11008)},
    {"q/k/v/o": 4, "gate/up": 2, "down": 1},
    {"q/k/v/o": 0, "gate/up": 2, "down": 3},
)
LLAMA_70B = Decoder(
    "Llama-2-70B", 80,
    {"q/o": (8192, 8192), "k/v": (1024, 8192), "gate/up": (28672, 8192), "down": (8192, 28672)},
    {"q/o": 2, "k/v": 2, "gate/up": 2, "down": 1},
    {"q/o": 0, "k/v": 0, "gate/up": 2, "down": 3},
)


@dataclass(frozen=True)
class CostModel:
    """Fitted constants (see the module docstring)."""

    flops_per_s: float
    setup_ab: tuple[float, float]
    refit_flops_per_s: float
    memory_ab: tuple[float, float]
    measured: dict  # (m, n) -> (setup + 1 iteration s, s / iteration, refit s or None)

    def iteration_s(self, m: int, n: int) -> float:
        if (m, n) in self.measured:
            return self.measured[(m, n)][1]
        return 2.0 * m * n * n / self.flops_per_s

    def setup_s(self, m: int, n: int) -> float:
        if (m, n) in self.measured:
            return self.measured[(m, n)][0]
        a, b = self.setup_ab
        return a * n**3 + b * m * n * n

    def refit_s(self, m: int, n: int) -> float:
        if self.measured.get((m, n), (0, 0, None))[2] is not None:
            return self.measured[(m, n)][2]
        k = DENSITY * n
        return m * k**3 / 3.0 / self.refit_flops_per_s

    def solve_s(self, m: int, n: int, iters: int, refit: bool) -> float:
        t = self.setup_s(m, n) + (iters - 1) * self.iteration_s(m, n)
        return t + (self.refit_s(m, n) if refit else 0.0)

    def peak_bytes(self, m: int, n: int) -> float:
        a, b = self.memory_ab
        return a * 8.0 * m * n + b * 8.0 * n * n


def fit(rows: list[dict]) -> CostModel:
    """Least-squares fit of the cost models to the measured rows."""
    mn2 = np.array([2.0 * r["m"] * r["n"] ** 2 for r in rows])
    f = float(np.median(mn2 / np.array([r["s_per_iter"] for r in rows])))
    A = np.array([[r["n"] ** 3, r["m"] * r["n"] ** 2] for r in rows], dtype=float)
    setup = np.array([r["setup_plus_1_iter_s"] for r in rows])
    ab = np.linalg.lstsq(A, setup, rcond=None)[0]
    refits = [(r["refit_gflop"] * 1e9, float(np.median(r["refit_s"]))) for r in rows if r.get("refit_s")]
    refit_rate = float(np.median([g / s for g, s in refits]))
    M = np.array([[8.0 * r["m"] * r["n"], 8.0 * r["n"] ** 2] for r in rows])
    mem = np.linalg.lstsq(M, np.array([r["peak_extra_bytes"] for r in rows], dtype=float), rcond=None)[0]
    measured = {(r["m"], r["n"]): (r["setup_plus_1_iter_s"], r["s_per_iter"],
                                   float(np.median(r["refit_s"])) if r.get("refit_s") else None) for r in rows}
    return CostModel(f, (float(ab[0]), float(ab[1])), refit_rate, (float(mem[0]), float(mem[1])), measured)


def rank_for(m: int, n: int) -> int:
    return int(0.25 * m * n / (m + n))


def layer_rows(dec: Decoder, cm: CostModel, iters: list[int]) -> list[dict]:
    """Per-layer memory, bytes moved and seconds for one shape."""
    out = []
    for name, (m, n) in dec.layers.items():
        r = rank_for(m, n)
        nnz = DENSITY * m * n
        row = {
            "layer": name, "m": m, "n": n, "rank": r, "copies": dec.copies[name],
            "weight_mib": 4 * m * n / MIB, "gram_mib": 8 * n * n / MIB,
            "peak_extra_mib": cm.peak_bytes(m, n) / MIB,
            "bytes_in_mib": (4 * m * n + 8 * n * n) / MIB,
            "bytes_out_mib": (4 * r * (m + n) + 6 * nnz) / MIB,
            "s_per_iter": cm.iteration_s(m, n), "setup_s": cm.setup_s(m, n), "refit_s": cm.refit_s(m, n),
        }
        for k in iters:
            row[f"solve_s_{k}"] = cm.solve_s(m, n, k, refit=False)
        out.append(row)
    return out


def block_plan(dec: Decoder, rows: list[dict], iters: int, refit: bool) -> dict:
    """Task-seconds per block, the sequential critical path, workers for an hour."""
    by = {r["layer"]: r for r in rows}

    def t(name: str) -> float:
        return by[name][f"solve_s_{iters}"] + (by[name]["refit_s"] if refit else 0.0)

    task_s = sum(t(n) * dec.copies[n] for n in by)
    stages: dict[int, float] = {}
    for n in by:
        stages[dec.stage[n]] = max(stages.get(dec.stage[n], 0.0), t(n))
    # the output projection (stage 1) has the q shape
    stages[1] = t(next(n for n in by if dec.stage[n] == 0 and by[n]["m"] == by[n]["n"]))
    critical = sum(stages.values())
    longest = max(t(n) for n in by)
    total = task_s * dec.blocks
    return {
        "iters": iters, "refit": refit, "task_s_per_block": task_s, "task_hours": total / 3600,
        "longest_task_s": longest, "critical_path_s_per_block": critical,
        "sequential_hours": critical * dec.blocks / 3600,
        "workers_for_one_hour": math.ceil(total / 3600) if longest <= 3600 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, nargs="+", default=[50, 300])
    ap.add_argument("--json", type=Path, default=None, help="also write the plan here")
    args = ap.parse_args()
    measured = json.loads(RESULTS.read_text())
    cm = fit(measured["rows"])
    print(f"fitted: {cm.flops_per_s / 1e9:.1f} GF/s per iteration, setup a={cm.setup_ab[0]:.3g} "
          f"b={cm.setup_ab[1]:.3g} s/flop, refit {cm.refit_flops_per_s / 1e9:.1f} GF/s, "
          f"memory {cm.memory_ab[0]:.2f} x 8mn + {cm.memory_ab[1]:.2f} x 8n^2")
    for r in measured["rows"]:
        a, b = cm.setup_ab
        pred = a * r["n"] ** 3 + b * r["m"] * r["n"] ** 2
        it = 2.0 * r["m"] * r["n"] ** 2 / cm.flops_per_s
        print(f"  check {r['layer']}: setup+1 measured {r['setup_plus_1_iter_s']:.1f} s, model {pred:.1f} s; "
              f"s/iter measured {r['s_per_iter']:.2f}, model {it:.2f}; "
              f"peak measured {r['peak_extra_bytes'] / MIB:.0f} MiB, model {cm.peak_bytes(r['m'], r['n']) / MIB:.0f}")
    plan = {}
    for dec in (LLAMA_7B, LLAMA_70B):
        rows = layer_rows(dec, cm, args.iters)
        print(f"\n### {dec.name}: {dec.blocks} blocks\n")
        print("| layer | shape | rank | W MiB | G MiB | peak extra MiB | in MiB | out MiB | s/iter | setup s | "
              + " | ".join(f"K={k} s" for k in args.iters) + " | refit s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(args.iters) + "---:|")
        for r in rows:
            print(f"| {r['layer']} (x{r['copies']}) | {r['m']}x{r['n']} | {r['rank']} | {r['weight_mib']:.0f} | "
                  f"{r['gram_mib']:.0f} | {r['peak_extra_mib']:.0f} | {r['bytes_in_mib']:.0f} | "
                  f"{r['bytes_out_mib']:.0f} | {r['s_per_iter']:.2f} | {r['setup_s']:.0f} | "
                  + " | ".join(f"{r[f'solve_s_{k}']:.0f}" for k in args.iters) + f" | {r['refit_s']:.0f} |")
        blocks = [block_plan(dec, rows, k, refit) for k in args.iters for refit in (False, True)]
        print("\n| max_iter | refit | task-s per block | task-hours | longest task s | "
              "workers for 1 h (independent layers) | sequential critical path s/block | sequential hours |")
        print("|---:|:-:|---:|---:|---:|---:|---:|---:|")
        for b in blocks:
            w = b["workers_for_one_hour"]
            print(f"| {b['iters']} | {'yes' if b['refit'] else 'no'} | {b['task_s_per_block']:.0f} | "
                  f"{b['task_hours']:.1f} | {b['longest_task_s']:.0f} | "
                  f"{w if w is not None else 'n/a (a task > 1 h)'} | {b['critical_path_s_per_block']:.0f} | "
                  f"{b['sequential_hours']:.1f} |")
        plan[dec.name] = {"layers": rows, "blocks": blocks}
    if args.json:
        model = {k: v for k, v in cm.__dict__.items() if k != "measured"}
        args.json.write_text(json.dumps({"model": model, "plan": plan}, indent=1))


if __name__ == "__main__":
    main()
