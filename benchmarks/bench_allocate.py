#!/usr/bin/env python
"""Network-wide allocation speed on VGG-16 at ImageNet shapes (138 M parameters).

    python benchmarks/bench_allocate.py                    # 3 repeats, writes results/allocate_cpu.md
    python benchmarks/bench_allocate.py --repeats 1 --methods alds --modes rank_only --out /tmp/res

Builds the 16 weight layers of VGG-16 (configuration D, 224x224 inputs: 13 3x3 convs and
fc 4096x25088, 4096x4096, 1000x4096) with synthetic weights of trained-like spectra
(:func:`shapes.synthetic_weight`; no ImageNet checkpoint is available offline), then times
:func:`lowrank_sparse.budget.allocate` at Budget(params=0.25):

* cold: a fresh CurveCache (every spectrum / decomposition computed),
* warm: the same call again with the cache of the cold call (search only),

for each method (alds, enc, uniform) and mode (lowrank_sparse, rank_only), the first and
last layer kept dense (the default).  Per-layer solves are not part of allocate().  The
cold/warm pairs run interleaved; the table reports medians over ``--repeats`` runs, the
achieved params ratio and the seconds in curves vs search.  Weight generation is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from shapes import synthetic_weight  # noqa: E402

from lowrank_sparse.budget import Budget, CurveCache, LayerSpec, allocate  # noqa: E402

#: (out_channels, in_channels, output H=W) of VGG-16's convs at 224x224 (padding 1).
VGG16_CONVS = [(64, 3, 224), (64, 64, 224), (128, 64, 112), (128, 128, 112), (256, 128, 56), (256, 256, 56),
               (256, 256, 56), (512, 256, 28), (512, 512, 28), (512, 512, 28), (512, 512, 14), (512, 512, 14),
               (512, 512, 14)]
VGG16_FCS = [(4096, 25088), (4096, 4096), (1000, 4096)]


def vgg16_layers(seed: int = 0) -> tuple[list[LayerSpec], int, int]:
    """(layer specs, total params incl. biases = 138,357,544, total MACs per 224x224 image)."""
    layers = []
    for i, (o, c, hw) in enumerate(VGG16_CONVS):
        w = torch.from_numpy(synthetic_weight(o, c * 9, seed=seed + i))
        layers.append(LayerSpec(f"features.conv{i + 1}", w, "conv", 9, (hw, hw)))
    for i, (m, n) in enumerate(VGG16_FCS):
        w = torch.from_numpy(synthetic_weight(m, n, seed=seed + 100 + i))
        layers.append(LayerSpec(f"classifier.fc{i + 6}", w))
    biases = sum(o for o, _, _ in VGG16_CONVS) + sum(m for m, _ in VGG16_FCS)
    total_params = sum(l.dense_params for l in layers) + biases
    total_macs = sum(l.dense_macs for l in layers)
    return layers, total_params, total_macs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["alds", "enc", "uniform"])
    ap.add_argument("--modes", nargs="+", default=["lowrank_sparse", "rank_only"])
    ap.add_argument("--params", type=float, default=0.25, help="Budget(params=...) fraction")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    load0 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    t = time.perf_counter()
    layers, tp, tf = vgg16_layers()
    print(f"VGG-16 ImageNet shapes: {tp:,} params, {tf:,} MACs; weights built in {time.perf_counter() - t:.1f} s "
          f"(not timed); torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    res: dict[tuple[str, str], dict[str, list[float]]] = {}
    for rep in range(args.repeats):
        for mode in args.modes:
            for method in args.methods:
                cache = CurveCache()
                t0 = time.perf_counter()
                a = allocate(layers, Budget(params=args.params), method, mode=mode, total_params=tp,
                             total_macs=tf, cache=cache)
                cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                b = allocate(layers, Budget(params=args.params), method, mode=mode, total_params=tp,
                             total_macs=tf, cache=cache)
                warm = time.perf_counter() - t0
                assert [(x.rank, x.nnz, x.slices) for x in a.layers] == [(x.rank, x.nnz, x.slices) for x in b.layers]
                r = res.setdefault((method, mode), {"cold": [], "warm": [], "curves": [], "search": [], "ratio": []})
                r["cold"].append(cold)
                r["warm"].append(warm)
                r["curves"].append(a.info["seconds_curves"])
                r["search"].append(a.info["seconds_search"])
                r["ratio"].append(a.params_ratio)
                print(f"rep {rep} {method:8s} {mode:15s} cold {cold:6.2f} s  warm {warm:6.2f} s  "
                      f"params ratio {a.params_ratio:.4f}  max pred. error {a.max_error():.3f}", flush=True)
                if rep == 0 and method == "alds":
                    print(a.table(), flush=True)
    for (method, mode), r in res.items():
        rows.append(f"| {method} | {mode} | {statistics.median(r['cold']):.2f} | {statistics.median(r['warm']):.2f} | "
                    f"{statistics.median(r['curves']):.2f} | {statistics.median(r['search']):.2f} | "
                    f"{statistics.median(r['ratio']):.4f} |")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    md = [
        "# Allocation speed: VGG-16 at ImageNet shapes",
        "",
        f"`python benchmarks/bench_allocate.py --repeats {args.repeats}`; Budget(params={args.params}), first/last "
        f"layer dense; synthetic weights (benchmarks/shapes.py); {len(layers)} layers, {tp:,} params.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); load average (1/5/15 min) at the start "
        f"{load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}, at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
        f"(shared machine: absolute seconds are noisy).",
        "",
        "Seconds, medians over the repeats. cold: fresh CurveCache; warm: same call with the cache; "
        "curves/search: the cold call's split.",
        "",
        "| method | mode | cold (s) | warm (s) | curves (s) | search (s) | params ratio |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "allocate_cpu.md"
    path.write_text("\n".join(md))
    print("\n".join(md))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
