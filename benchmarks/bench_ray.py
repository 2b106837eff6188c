"""compress() serially and on a local 2-worker Ray cluster: wall time, Ray's per-task
overhead, peak resident memory per worker.

The model is a MiniLM-shaped stack with random weights: ``--blocks`` blocks of q, k, v,
o (h x h), fc1 (4h x h) and fc2 (h x 4h) linears, h = ``--hidden`` (384 as in
all-MiniLM-L6-v2), GELU after fc1; calibration data are ``--tokens`` random rows.
Every layer is compressed at rank ``--rank`` and density 0.05 (explicit sizes, so the
allocator's probes do not enter the timing).

Measured:

* serial: compress(executor="serial") with this process's threads (torch's default),
  and once more with torch at 1 thread (the threads of each Ray task) for the bitwise
  comparison: the solver's torch-side float64 work (MKL) rounds differently with the
  thread count on layers this large, so a Ray run is bitwise equal to the serial run at
  the same threads per solve;
* ray: compress(executor=RayExecutor(num_cpus=2, cpus_per_task=1)) on a local cluster
  started before the timing (start-up reported separately); results checked bitwise
  equal to the serial runs;
* overhead: median round trip of an empty task (returns its payload's byte count)
  whose payload is one layer's problem (the fc1 weight in float32 + its float64 Gram
  matrix), through ray.put, and of one with a 1-byte payload;
* peak RSS per worker: ru_maxrss of each worker process after its last solve (logged by
  a wrapper around the solve handler).

Run: ``python benchmarks/bench_ray.py [--blocks 2 --hidden 384 --tokens 2048]``;
writes benchmarks/results/ray_cpu.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import lowrank_sparse as lrs
from lowrank_sparse.compress import methods as M

ORIG = M.get_method("lowrank_sparse")
RSS_LOG = Path(tempfile.gettempdir()) / f"bench_ray_rss_{os.getpid()}.log"


class Block(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.q(x) * self.k(x) / x.shape[-1] ** 0.5, dim=-1) * self.v(x)
        x = x + self.o(a)
        return x + self.fc2(F.gelu(self.fc1(x)))


def stack(blocks: int, h: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(Block(h) for _ in range(blocks)))


def logging_solve(problem, config):
    """The real handler, then (pid, peak RSS in KiB) appended to the log."""
    dec = ORIG.solve(problem, config)
    with open(RSS_LOG, "a") as f:
        f.write(f"{os.getpid()} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")
    return dec


def echo(payload) -> int:
    return sum(t.numel() * t.element_size() for t in payload) if isinstance(payload, tuple) else 1


def overhead(ray, payload, n: int = 15) -> float:
    """Median seconds of put + empty task + get."""
    from lowrank_sparse.executors.ray import run_task

    f = ray.remote(run_task).options(num_cpus=1)
    ray.get(f.remote(echo, ray.put(payload)))  # warm
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(f.remote(echo, ray.put(payload)))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray_cpu.json"))
    args = ap.parse_args()
    import ray

    from lowrank_sparse.executors import RayExecutor

    model, h = stack(args.blocks, args.hidden), args.hidden
    data = torch.randn(args.tokens, h, generator=torch.Generator().manual_seed(1))
    kw = dict(rank=args.rank, density=0.05, max_iter=args.max_iter, progress=False, keep_first_last=False,
              batch_size=256)
    M.register_method("lowrank_sparse", ORIG.config_cls, logging_solve, allocation_mode=ORIG.allocation_mode,
                      solver_split=ORIG.solver_split)
    RSS_LOG.unlink(missing_ok=True)
    t0 = time.perf_counter()
    ref, rep = lrs.compress(model, data, **kw)
    t_serial = time.perf_counter() - t0
    serial_rss = max(int(line.split()[1]) for line in RSS_LOG.read_text().split("\n") if line)
    RSS_LOG.unlink()
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    new, _ = lrs.compress(model, data, executor=RayExecutor(cpus_per_task=1), **kw)
    t_ray = time.perf_counter() - t0
    same = _equal(ref, new)
    nt = torch.get_num_threads()
    torch.set_num_threads(1)  # the threads of each Ray task
    ref1, _ = lrs.compress(model, data, **kw)
    torch.set_num_threads(nt)
    same1 = _equal(ref1, new)
    per_worker: dict[str, int] = {}
    for line in RSS_LOG.read_text().split("\n"):
        if line:
            pid, kib = line.split()
            if int(pid) == os.getpid():  # the 1-thread serial run of this process
                continue
            per_worker[pid] = max(per_worker.get(pid, 0), int(kib))
    RSS_LOG.unlink()
    W = torch.randn(4 * h, h)
    layer_payload = (W, torch.randn(h, h, dtype=torch.float64))
    res = {
        "model": f"{args.blocks} MiniLM-shaped blocks, hidden {h}: {len(rep.layers)} linears",
        "tokens": args.tokens, "rank": args.rank, "density": 0.05, "max_iter": args.max_iter,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "load_avg": os.getloadavg(), "torch_threads_serial": torch.get_num_threads(),
        "serial_s": t_serial, "ray_s": t_ray, "ray_start_s": t_start, "ratio_serial_over_ray": t_serial / t_ray,
        "bitwise_equal_serial_default_threads": same, "bitwise_equal_serial_1_thread": same1,
        "solve_s_sum": sum(r.seconds for r in rep.layers),
        "layer_solve_s": {r.name: r.seconds for r in rep.layers},
        "overhead_layer_payload_ms": 1e3 * overhead(ray, layer_payload),
        "layer_payload_bytes": sum(t.numel() * t.element_size() for t in layer_payload),
        "overhead_empty_ms": 1e3 * overhead(ray, None),
        "peak_rss_mib_per_worker": {k: v / 1024 for k, v in per_worker.items()},
        "peak_rss_mib_serial_process": serial_rss / 1024,
    }
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"| serial s | ray s (2 workers) | serial/ray | ray start s | task overhead ms (layer payload "
          f"{res['layer_payload_bytes'] / 2**20:.1f} MiB / empty) | peak RSS MiB per worker | equal to serial (its threads / 1 thread) |")
    print("|---:|---:|---:|---:|---:|---|:-:|")
    rss = ", ".join(f"{v:.0f}" for v in res["peak_rss_mib_per_worker"].values())
    print(f"| {t_serial:.2f} | {t_ray:.2f} | {t_serial / t_ray:.2f} | {t_start:.1f} | "
          f"{res['overhead_layer_payload_ms']:.1f} / {res['overhead_empty_ms']:.1f} | {rss} | {same} / {same1} |")


if __name__ == "__main__":
    main()
