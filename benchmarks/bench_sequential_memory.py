"""Peak memory and time of one-shot compression of a transformer, with the statistics
streamed and, optionally, sequential calibration (each layer fitted on the inputs the
already-compressed layers before it produce).

Models: all-MiniLM-L6-v2 (real weights, 6 encoder blocks, hidden 384) and a
GPT-2-small-shaped decoder (12 blocks, hidden 768, MLP 3072, random weights from
``GPT2Config``'s initialisation: fine for memory and time, not for quality).
Calibration: ``--sequences`` rows of ``--seq-len`` random token ids (all real tokens),
batches of 8.  Target: ``Budget(params=0.5, scope="layers")``, the default method
(activation-aware L + S) with ``max_iter`` capped (``--max-iter``) to bound the time.

Each cell runs in a fresh process started with ``MALLOC_MMAP_THRESHOLD_=65536`` (freed
large blocks leave the resident set).  After the model and the calibration batches are
built, the peak resident set (VmHWM) is reset through ``/proc/self/clear_refs``; the
figure reported is VmHWM after ``compress`` minus VmRSS before it: everything the
compression needed on top of the model and its data (the deep copy compress makes,
the streamed statistics, the solver's work arrays, the new layers).  For scale the
table gives the model's own bytes and the bytes of every selected layer's inputs over
the calibration tokens (what capturing all activations would hold; one float32 per
input value).

Run: ``python benchmarks/bench_sequential_memory.py`` (about 10-20 min on 2 cores);
writes benchmarks/results/sequential_memory_cpu.{json,md} (rows of cells not run are kept; ``--calibrations one-pass`` runs one of the two).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sequential_memory_cpu"
MODELS = ("minilm", "gpt2_small")


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _model(name: str) -> Any:
    import torch
    import transformers

    from lowrank_sparse.models import hf

    if name == "minilm":
        return hf.load_hf(hf.minilm_folder())
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=256, vocab_size=8192)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _batches(model: Any, sequences: int, seq_len: int) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    out = []
    for start in range(0, sequences, 8):
        rows = min(8, sequences - start)
        ids = torch.randint(0, vocab, (rows, seq_len), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def cell(name: str, sequential: bool, sequences: int, seq_len: int, max_iter: int) -> dict[str, Any]:
    """One measurement in this process (run it in a fresh one)."""
    import warnings

    import torch

    import lowrank_sparse as lrs

    torch.set_num_threads(2)
    model = _model(name)
    batches = _batches(model, sequences, seq_len)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        t0 = time.perf_counter()
        small, report = lrs.compress(model, batches, lrs.Budget(params=0.5, scope="layers"), max_iter=max_iter,
                                     sequential=sequential, progress=False)
        seconds = time.perf_counter() - t0
        peak = _status("VmHWM")
    layers = report.to_dict()["layers"]
    tokens = sequences * seq_len
    inputs = sum(int(r["shape"][1]) for r in layers)  # weight shape (out, in) as the report gives it
    return {"model": name, "sequential": sequential, "tokens": tokens, "layers": len(layers),
            "max_iter": max_iter, "seconds": seconds, "peak_extra_bytes": peak - before,
            "model_bytes": model_bytes, "all_inputs_bytes": 4 * tokens * inputs,
            "load": os.getloadavg()[0]}


def render(rows: list[dict[str, Any]]) -> str:
    mib = 2.0 ** 20
    out = ["| model | calibration | layers | tokens | peak extra MiB | model MiB | all layer inputs MiB | compress s |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {'sequential' if r['sequential'] else 'one pass'} | {r['layers']} | "
                   f"{r['tokens']} | {r['peak_extra_bytes'] / mib:.0f} | {r['model_bytes'] / mib:.0f} | "
                   f"{r['all_inputs_bytes'] / mib:.0f} | {r['seconds']:.0f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--calibrations", nargs="+", default=["one-pass", "sequential"], choices=["one-pass", "sequential"])
    ap.add_argument("--cell", nargs=2, metavar=("MODEL", "SEQUENTIAL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        row = cell(args.cell[0], args.cell[1] == "1", args.sequences, args.seq_len, args.max_iter)
        print(json.dumps(row))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    path = OUT.with_suffix(".json")
    rows = json.loads(path.read_text())["rows"] if path.exists() else []  # other models' rows are kept
    runs = [(m, c == "sequential") for m in args.models for c in args.calibrations]
    rows = [r for r in rows if (r["model"], r["sequential"]) not in runs]
    for name in args.models:
        for seq in [s for m, s in runs if m == name]:
            cmd = [sys.executable, __file__, "--cell", name, "1" if seq else "0", "--sequences", str(args.sequences),
                   "--seq-len", str(args.seq_len), "--max-iter", str(args.max_iter)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs", "threads": 2}
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    OUT.with_suffix(".md").write_text(render(rows))
    print(render(rows))


if __name__ == "__main__":
    main()
