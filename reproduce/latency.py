#!/usr/bin/env python
"""Paired CPU latency of the sweep's saved models against their dense originals.

On a CPU shared with other jobs, a latency measured at one moment and the dense model's
measured minutes earlier are not comparable (the load changes by several x).  This script
reloads every saved compressed model of ``--jsonl`` (``lowrank_sparse.load``) and its dense
original, and times them INTERLEAVED: each round runs one forward pass of each (order
alternating between rounds), on the same (batch, *input shape) input, eval and inference
mode, ``--threads`` torch threads.  Reported per row: median of each, and the median of the
per-round ratios (compressed / dense), which is what tables.py shows when this file exists.

    nice python reproduce/latency.py                 # docs/results/results.jsonl -> latency.jsonl

Resumable: rows already in ``--out`` are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
KEY_FIELDS = ("model", "dataset", "schedule", "seed", "budget", "method", "allocation", "protocol")


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def dense_file(row: dict[str, Any]) -> Optional[Path]:
    """The dense original saved by the sweep next to ``row['model_file']``."""
    mf = row.get("model_file")
    if not mf:
        return None
    folder = Path(mf).parent
    pat = f"{row['model']}-{row['dataset']}-*-s{row['seed']}---dense---{row['protocol']}-final.safetensors"
    hits = sorted(folder.glob(pat))
    return hits[0] if hits else None


def paired(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, ...], batch: int, rounds: int,
           threads: int) -> dict[str, Any]:
    """Interleaved timing of a (dense) and b (compressed); ms."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0))
        ta, tb = [], []
        with torch.inference_mode():
            a(x), b(x), a(x), b(x)
            for i in range(rounds):
                order = (a, b) if i % 2 == 0 else (b, a)
                for m in order:
                    t0 = time.perf_counter()
                    m(x)
                    (ta if m is a else tb).append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
    return {"dense_median_ms": statistics.median(ta), "median_ms": statistics.median(tb),
            "median_ratio": statistics.median(y / x for x, y in zip(ta, tb)), "rounds": rounds,
            "batch": batch, "threads": threads, "load_avg_1min": os.getloadavg()[0]}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jsonl", type=Path, default=REPO / "docs" / "results" / "results.jsonl")
    p.add_argument("--out", type=Path, default=None, help="default: latency.jsonl beside --jsonl")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    out = args.out or args.jsonl.parent / "latency.jsonl"
    import lowrank_sparse as lrs

    done = {tuple(r.get(k) for k in KEY_FIELDS) for r in read_rows(out)}
    latest: dict[tuple, dict[str, Any]] = {}
    for r in read_rows(args.jsonl):
        if r.get("status") == "ok" and r.get("model_file") and r.get("method") != "dense":
            latest[tuple(r.get(k) for k in KEY_FIELDS)] = r
    for key, r in latest.items():
        if key in done:
            continue
        df = dense_file(r)
        if df is None or not Path(r["model_file"]).is_file():
            print(f"[latency] skip {key}: saved files missing", flush=True)
            continue
        dense, comp = lrs.load(df).eval(), lrs.load(r["model_file"]).eval()
        shape = (3, 224, 224) if r["dataset"] == "imagenet_samples" else (1, 8, 8) if r["dataset"] == "digits" \
            else (1, 32, 32)
        res = paired(dense, comp, shape, args.batch, args.rounds, args.threads)
        rec = {k: r.get(k) for k in KEY_FIELDS}
        rec.update(res, command=f"python reproduce/latency.py --batch {args.batch} --rounds {args.rounds} "
                                f"--threads {args.threads}")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        print(f"[latency] {' '.join(str(k) for k in key)}: {res['median_ms']:.1f} ms vs dense "
              f"{res['dense_median_ms']:.1f} ms (ratio {res['median_ratio']:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
