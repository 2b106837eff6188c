"""Peak-memory probe: run decompositions in this (fresh) process and report the
extra resident memory each one needed.

Usage (what benchmarks/harness.py:memory_probe does)::

    echo '[{"case": {...Case fields...}, "backend": "native", "tol": 1e-4, "max_iter": 5}]' \
        | python benchmarks/memprobe.py --threads 2

Method: after imports, a warm-up solve on a tiny matrix (so code pages are resident)
and building W, record VmRSS, reset the peak resident set VmHWM by writing "5" to
/proc/self/clear_refs, solve, and read VmHWM.  extra = VmHWM - VmRSS(before) covers
every allocation of the solve (C++ vectors, BLAS/LAPACK workspaces, torch tensors,
numpy arrays) and its outputs (U, V, dense S).  This is done twice on the same W:

* ``first_extra_bytes``: the first solve of this size in the process.  It also pays
  one-time, process-lifetime costs that a second solve does not: torch's intra-op
  thread pool (started by the first parallel torch op, e.g. the finiteness check;
  ~15 MiB resident), and OpenBLAS's per-thread GEMM buffers on the core's threads
  (touched up to the size of the largest GEMM blocks seen so far).
* ``extra_bytes``: the second solve, i.e. the memory a solve itself needs.

harness.memory_probe starts this process with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
glibc serves every large block by mmap and returns it on free; with the default
dynamic threshold the first solve's freed arrays stay resident in the heap and the
second solve would reuse them and read as ~0.
For CUDA runs torch.cuda.max_memory_allocated is reported as well.

Prints one JSON list (one record per request, bytes) as the last line of stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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
        extras = []
        for _ in range(2):  # first solve of this size, then the steady state
            gc.collect()
            rss0 = harness.read_status_kb("VmRSS")
            exact = harness.reset_peak()
            hwm0 = harness.read_status_kb("VmHWM")
            if backend == "torch_cuda":
                torch.cuda.reset_peak_memory_stats()
            res, dt = harness.solve(case, W, backend, tol=req["tol"], max_iter=req["max_iter"])
            hwm = harness.read_status_kb("VmHWM")
            extras.append((hwm - rss0) * 1024 if exact else max(0, hwm - hwm0) * 1024)
            if len(extras) == 1:
                del res
        rec = {
            "backend": backend,
            "case": case.label,
            "extra_bytes": extras[1],
            "first_extra_bytes": extras[0],
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
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
