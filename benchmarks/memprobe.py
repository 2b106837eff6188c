"""Peak-memory probe: run decompositions in this (fresh) process and report the
extra resident memory each one needed.

Usage (what benchmarks/harness.py:memory_probe does)::

    echo '[{"case": {...Case fields...}, "backend": "native", "tol": 1e-4, "max_iter": 5}]' \
        | python benchmarks/memprobe.py --threads 2

Method: after imports, a warm-up solve on a tiny matrix (so code pages and thread
pools are already resident) and building W, record VmRSS, reset the peak resident
set VmHWM by writing "5" to /proc/self/clear_refs, solve, and read VmHWM.
extra = VmHWM - VmRSS(before) covers every allocation of the solve (C++ vectors,
BLAS/LAPACK workspaces, torch tensors, numpy arrays) and its outputs (U, V, dense S).
For CUDA runs torch.cuda.max_memory_allocated is reported as well.

Prints one JSON list (one record per request, bytes) as the last line of stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402
from shapes import Case, synthetic_weight  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    requests = json.loads(sys.stdin.read())
    harness.set_threads(args.threads)
    out = []
    warmed: set[str] = set()
    for req in requests:
        case = Case(**req["case"])
        backend = req["backend"]
        if backend not in warmed:
            harness.warmup([backend])
            warmed.add(backend)
        W = synthetic_weight(case.m, case.n, seed=req.get("seed", 0))
        gc.collect()
        rss0 = harness.read_status_kb("VmRSS")
        exact = harness.reset_peak()
        hwm0 = harness.read_status_kb("VmHWM")
        if backend == "torch_cuda":
            torch.cuda.reset_peak_memory_stats()
        res, dt = harness.solve(case, W, backend, tol=req["tol"], max_iter=req["max_iter"])
        hwm = harness.read_status_kb("VmHWM")
        rec = {
            "backend": backend,
            "case": case.label,
            "extra_bytes": (hwm - rss0) * 1024 if exact else max(0, hwm - hwm0) * 1024,
            "rss_before_bytes": rss0 * 1024,
            "peak_bytes": hwm * 1024,
            "weight_bytes": case.weight_bytes,
            "iterations": int(res.info.iterations),
            "seconds": dt,
            "method": "VmHWM after clear_refs" if exact else "VmHWM delta (clear_refs not permitted)",
        }
        if backend == "torch_cuda":
            rec["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        out.append(rec)
        del res, W
        gc.collect()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
