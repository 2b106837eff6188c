"""CPU latency of compressed models in torch eager, torch.compile and ONNX Runtime.

Models (each dense original beside its compressed form):

* VGG-16 (lowrank_sparse.models, 13 conv + 3 FC, width 1) at 32x32 and at 224x224 input.
  Weights are random with a realistic decaying spectrum (singular values ~ i^-0.8 on
  random orthonormal bases); the compressed form keeps the first conv and replaces every
  other layer by the module pair built from that weight: L = its rank-r truncated SVD
  (r = 15% of min(m, n)), S = the 5% largest entries of W - L (unstructured, CSR).
  Latency does not depend on the values, only on the shapes and the sparse support.
* MobileNetV2 with the real ImageNet weights (lowrank_sparse.models.pretrained_mobilenet_v2),
  compressed by lowrank_sparse.compress to half its parameters on the 20 shipped
  ImageNet images (30 ADMM iterations per layer); 224x224 input.

For every (model, batch) the three runtimes run paired and interleaved (one call of
each per round, the order rotated), on ``--threads`` threads each; medians and the
interquartile range of the per-call wall time are reported, with the largest relative
output difference against eager (ONNX Runtime, torch.compile) as a check.

    python benchmarks/bench_export.py                 # writes docs/results/export.md
    python benchmarks/bench_export.py --quick         # small shapes, seconds
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import lowrank_sparse as lrs
from lowrank_sparse import models
from lowrank_sparse.export import export_onnx, onnx_session, relative_error, run_onnx
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.solve.result import Decomposition, SolveInfo

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("eager", "compile", "onnxruntime")


# ----------------------------------------------------------------------------- models
def decaying_weight(m: int, n: int, g: torch.Generator, alpha: float = 0.8) -> torch.Tensor:
    """(m, n) = Q1 diag(s) Q2^T, s_i = i^-alpha scaled to He-like entry size."""
    k = min(m, n)
    q1, _ = torch.linalg.qr(torch.randn(m, k, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
    s = torch.arange(1, k + 1, dtype=torch.float32) ** -alpha
    W = (q1 * s) @ q2.T
    return W * (math.sqrt(2.0 * m * n / n) / W.norm())


def split(W: torch.Tensor, rank_frac: float, density: float) -> Decomposition:
    """Truncated SVD of rank ``rank_frac * min(m, n)`` plus the largest ``density`` of the
    residual's entries (unstructured)."""
    m, n = W.shape
    r = max(1, round(rank_frac * min(m, n)))
    Uf, s, Vh = torch.linalg.svd(W, full_matrices=False)
    U, V = Uf[:, :r] * s[:r], Vh[:r]
    R = W - U @ V
    k = max(1, round(density * m * n))
    keep = torch.zeros(m * n, dtype=torch.bool)
    keep[R.abs().flatten().topk(k).indices] = True
    S = torch.where(keep.view(m, n), R, torch.zeros_like(R))
    return Decomposition(U, V, S, lrs.parse_structure("unstructured"), SolveInfo())


def vgg16_pair(width: float, rank_frac: float = 0.15, density: float = 0.05) -> tuple[nn.Module, nn.Module]:
    """(dense VGG-16 with decaying-spectrum weights, its compressed form)."""
    g = torch.Generator().manual_seed(0)
    dense = models.build("vgg16", in_channels=3, num_classes=10, width=width).eval()
    layers = [(n, m) for n, m in dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for _, mod in layers:
            w = mod.weight
            mod.weight.copy_(decaying_weight(w.shape[0], w[0].numel(), g).view_as(w))
    comp = models.build("vgg16", in_channels=3, num_classes=10, width=width).eval()
    comp.load_state_dict(dense.state_dict())
    for name, mod in layers[1:]:
        dec = split(mod.weight.detach().reshape(mod.weight.shape[0], -1), rank_frac, density)
        if isinstance(mod, nn.Conv2d):
            comp.set_submodule(name, LowRankSparseConv2d.from_conv(mod, dec))
        else:
            comp.set_submodule(name, LowRankSparseLinear.from_decomposition(dec, bias=mod.bias))
    return dense, comp.eval()


def mobilenet_pair() -> tuple[nn.Module, nn.Module]:
    """(pretrained MobileNetV2, compressed to half its parameters on the ImageNet samples)."""
    from lowrank_sparse import data

    dense = models.pretrained_mobilenet_v2().eval()
    x, _ = data.imagenet_samples()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp, _ = lrs.compress(dense, x, target=lrs.Budget(params=0.5), max_iter=30, progress=False)
    return dense, comp.eval()


# ----------------------------------------------------------------------------- timing
@dataclass
class Cell:
    model: str
    form: str
    batch: int
    params: int
    onnx_bytes: int = 0
    compile_s: float = 0.0
    times: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in RUNTIMES})
    err: dict[str, float] = field(default_factory=dict)


def _callables(model: nn.Module, x: torch.Tensor, threads: int, tmp: Path, cell: Cell) -> dict[str, Callable[[], Any]]:
    torch._dynamo.reset()  # every cell compiles afresh (no recompile limit shared across cells)
    path = export_onnx(model, x, tmp / f"{cell.model}-{cell.form}-{cell.batch}.onnx")
    cell.onnx_bytes = path.stat().st_size
    sess = onnx_session(path, threads)
    compiled = torch.compile(model, dynamic=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(x)
        t = time.perf_counter()
        out_c = compiled(x)
        cell.compile_s = time.perf_counter() - t
    cell.err = {"compile": relative_error(out_c, ref), "onnxruntime": relative_error(run_onnx(sess, x), ref)}
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return {"eager": lambda: model(x), "compile": lambda: compiled(x), "onnxruntime": lambda: sess.run(None, feed)}


def measure(model: nn.Module, x: torch.Tensor, cell: Cell, threads: int, tmp: Path, budget_s: float,
            min_rounds: int) -> Cell:
    """Paired, interleaved rounds (one call per runtime, order rotated) after one warm-up
    round, until ``min_rounds`` and ``budget_s`` seconds are both reached (max 200)."""
    fns = _callables(model, x, threads, tmp, cell)
    with torch.no_grad():
        for f in fns.values():
            f()
        start, k = time.perf_counter(), 0
        while k < 200 and (k < min_rounds or time.perf_counter() - start < budget_s):
            order = RUNTIMES[k % 3:] + RUNTIMES[:k % 3]
            for r in order:
                t = time.perf_counter()
                fns[r]()
                cell.times[r].append(time.perf_counter() - t)
            k += 1
    return cell


def stats(ts: list[float]) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile) in ms."""
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return statistics.median(ts) * 1e3, q[0] * 1e3, q[2] * 1e3


# ----------------------------------------------------------------------------- report
def table(cells: list[Cell]) -> str:
    head = ("| model | form | batch | params | .onnx MB | eager ms | torch.compile ms | ONNX Runtime ms "
            "| ORT / eager | compile s | max rel. diff (compile, ORT) |")
    lines = [head, "|" + "---|" * 11]
    for c in cells:
        med = {r: stats(c.times[r]) for r in RUNTIMES}
        fmt = {r: f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for r, (m, lo, hi) in med.items()}
        lines.append(
            f"| {c.model} | {c.form} | {c.batch} | {c.params:,d} | {c.onnx_bytes / 1e6:.2f} | {fmt['eager']} "
            f"| {fmt['compile']} | {fmt['onnxruntime']} | {med['onnxruntime'][0] / med['eager'][0]:.2f} "
            f"| {c.compile_s:.1f} | {c.err['compile']:.1e}, {c.err['onnxruntime']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="VGG-16 at width 0.25, 32x32 only, few rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timed rounds per (model, batch)")
    ap.add_argument("--min-rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="markdown table (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.budget, args.min_rounds = 0.5, 3
    suites: list[tuple[str, tuple[nn.Module, nn.Module], list[int]]] = []
    vgg = vgg16_pair(0.25 if args.quick else 1.0)
    suites.append(("vgg16 32x32", vgg, [32]))
    if not args.quick:
        suites.append(("vgg16 224x224", vgg, [224]))
        suites.append(("mobilenet_v2 224x224", mobilenet_pair(), [224]))
    cells: list[Cell] = []
    g = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dense, comp), (hw,) in suites:
            for form, model in (("dense", dense), ("compressed", comp)):
                params = sum(int(p.numel()) for p in model.parameters())
                for batch in (1, 8):
                    x = torch.randn(batch, 3, hw, hw, generator=g)
                    cell = measure(model, x, Cell(name, form, batch, params), args.threads, Path(tmp), args.budget,
                                   args.min_rounds)
                    cells.append(cell)
                    print(table([cell]).splitlines()[-1], flush=True)
    text = table(cells)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out} ({platform.processor() or platform.machine()}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
