"""``lowrank-sparse demo``: the built-in default run, end to end on real data."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import InfeasibleBudget
from . import compress, evaluate
from .args import fraction, positive_int
from .output import log

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``demo`` subparser to ``sub`` (argparse's subparsers action)."""
    d = sub.add_parser("demo", help="the built-in default: small CNN on real Fashion-MNIST, compressed to 25%% of its "
                                    "parameters (accuracy first) and to 60%% of its CPU time (speed first)")
    d.add_argument("--params", type=fraction, default=0.25, help="fraction of parameters to keep (default 0.25)")
    d.add_argument("--latency", type=fraction, default=0.6,
                   help="fraction of the dense CPU time for the speed-first model (default 0.6)")
    d.add_argument("--calib", type=positive_int, default=512, help="calibration images (default 512)")
    d.add_argument("--max-iter", type=positive_int, default=100, help="ADMM iteration cap per layer (default 100)")
    d.add_argument("--sample-size", type=positive_int, default=4096, help="input columns per layer (default 4096)")
    d.add_argument("--test-subset", type=positive_int, default=2000,
                   help="evaluate on a seeded subset of the 10,000 test images (default 2000)")
    d.add_argument("-o", "--output", help="where to save the compressed model (default: a temp dir)")
    d.add_argument("--json", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or load from the cache) a small CNN on real Fashion-MNIST and compress it
    twice: to a quarter of its parameters with activation-aware L + S (accuracy first),
    and to ``--latency`` of its measured CPU time with the form the execution planner
    measures fast at these layer sizes, rank-only factors (speed first); evaluate the
    saved files and end with a table of both."""
    dataset = _dataset(args)
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="lrs-demo-")) / "small_cnn_lrs.safetensors"
    fast = out.with_name(out.stem + "_fast" + out.suffix)
    t0 = time.perf_counter()
    rc = compress.run(_compress_args(args, dataset, out))
    if rc == 0:
        log(args, f"\nspeed first: the same network to {args.latency:.0%} of its CPU time (rank-only factors):")
        rc = _run_fast(args, dataset, fast)
    for path in (out, fast) if rc == 0 else ():
        log(args, f"\nevaluating the saved file {path.name}:")
        ev = argparse.Namespace(path=str(path), dataset=dataset, test_subset=args.test_subset, batch=64, json=args.json)
        rc = rc or evaluate.run(ev)
    if rc == 0:
        log(args, "\n" + _summary({"accuracy first (L + S)": out, "speed first (rank-only)": fast}))
        log(args, f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc


def _summary(files: dict[str, Path]) -> str:
    """The final table: each saved model's accuracy, parameters, MACs and paired CPU
    latency against the dense model, read back from the files' metadata."""
    from .. import io as _io

    rows = []
    for label, path in files.items():
        r = _io.read_metadata(path)["user"]["cli"]
        if not rows:
            b = r["before"]
            rows.append(("dense", f"{r['accuracy_before']:.2%}", f"{b['params']:,d}", f"{b['macs']:,d}",
                         f"{r['latency_ms_before']:.2f} ms", "1.00x"))
        q1, q3 = r["latency_ratio_iqr"]
        rows.append((label, f"{r['accuracy_after']:.2%}", f"{r['after']['params']:,d}", f"{r['after']['macs']:,d}",
                     f"{r['latency_ms_after']:.2f} ms",
                     f"{1 / r['latency_ratio']:.2f}x [{1 / q3:.2f}, {1 / q1:.2f}]"))
    head = ("model", "accuracy", "params", "MACs/sample", "CPU latency", "speed vs dense [IQR]")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*row).rstrip() for row in [head, tuple("-" * w for w in widths), *rows]]
    return "\n".join(lines + ["(batch 64, medians of paired interleaved rounds; each model in its fastest memory "
                                "format; speed = dense time / compressed time, above 1 is faster)"])


def _fast_args(args: argparse.Namespace, dataset: str, out: Path) -> argparse.Namespace:
    """The speed-first run: the demo's arguments with a latency budget and rank-only
    factors (at this network's layer sizes any sparse part runs slower than the dense
    product it would replace, so the planner would merge it back)."""
    fast = _compress_args(args, dataset, out)
    fast.params, fast.latency, fast.method = None, args.latency, "rank_only"
    return fast


#: speed-first runs at most (the first included) when the machine's timings put the target out of reach
#: or the model comes out too inaccurate
FAST_TRIES = 3
#: accuracy the speed-first model may lose against the dense one (fraction, 0.05 = 5 points)
MAX_DROP = 0.05
#: how much looser the latency target gets after a run that lost more than MAX_DROP
LOOSEN = 0.10


def _run_fast(args: argparse.Namespace, dataset: str, out: Path) -> int:
    """The speed-first run, up to :data:`FAST_TRIES` runs in all.  The latency target is
    a fraction of times measured on this machine, so

    * a target that one machine reaches can lie just below another's floor (the layers
      kept dense and the fastest factors of the others): then say so and ask for the
      reachable time plus 5 points of margin instead of ending the demo; each run times
      the model afresh, so on a busy machine the floor can move up between runs;
    * a noisy timing of the dense model or of its fixed part tightens the layers' share
      of the budget until a layer is cut to a rank that ruins the model (seen: 24.9 %
      accuracy at rank 1 for the classifier): when the saved model loses more than
      :data:`MAX_DROP` of accuracy, say so and ask for :data:`LOOSEN` more time.
    The last run's result is kept whatever its accuracy."""
    run = lambda lat: compress.run(_fast_args(argparse.Namespace(**{**vars(args), "latency": lat}), dataset, out))  # noqa: E731
    latency = args.latency
    for attempt in range(1, FAST_TRIES + 1):
        try:
            rc = run(latency)
        except InfeasibleBudget as e:
            if attempt == FAST_TRIES or e.budget != "latency" or e.reachable is None or e.reachable + 0.05 >= 1.0:
                raise
            loose = _percent_ceil(e.reachable + 0.05)
            log(args, f"on this machine the fastest rank-only model is predicted at {e.reachable:.1%} of the dense "
                      f"time, above the {latency:.0%} asked for: compressing to {loose:.0%} instead")
            latency = loose
            continue
        drop = _accuracy_drop(out) if rc == 0 and attempt < FAST_TRIES else None
        if drop is None or drop <= MAX_DROP or latency + LOOSEN >= 1.0:
            return rc
        loose = _percent_ceil(latency + LOOSEN)
        log(args, f"the speed-first model at {latency:.0%} of the dense time lost {drop:.1%} of accuracy (more than "
                  f"{MAX_DROP:.0%}; this machine's timings cut a layer too far): compressing to {loose:.0%} instead")
        latency = loose
    return rc


def _percent_ceil(x: float) -> float:
    """x rounded up to a whole percent (after rounding off float noise: 0.80 + 0.05 is 85 %, not 86 %)."""
    return math.ceil(round(100 * x, 9)) / 100


def _accuracy_drop(path: Path) -> float | None:
    """Dense accuracy minus the saved model's (fractions), from the file's metadata; None
    when the file does not record both."""
    from .. import io as _io

    r = _io.read_metadata(path)["user"]["cli"]
    before, after = r.get("accuracy_before"), r.get("accuracy_after")
    return None if before is None or after is None else float(before) - float(after)


def _dataset(args: argparse.Namespace) -> str:
    """Fashion-MNIST when its Debian package is installed, else MNIST."""
    from .. import data as _data

    try:
        _data.fashion_mnist("test")
    except (FileNotFoundError, RuntimeError, ValueError):
        log(args, "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): using MNIST")
        return "mnist"
    return "fashion_mnist"


def _compress_args(args: argparse.Namespace, dataset: str, out: Path) -> argparse.Namespace:
    """The ``compress`` arguments of the demo: small_cnn, ALDS, unstructured L + S."""
    return argparse.Namespace(
        model="small_cnn", dataset=dataset, schedule="cpu", seed=0, checkpoint=None, calib=args.calib,
        params=args.params, macs=None, rank=None, density=None, allocation="alds", structure="unstructured",
        method="lowrank_sparse", exclude=[], all_layers=False, max_iter=args.max_iter, sample_size=args.sample_size,
        test_subset=args.test_subset,
        fine_tune=0, fine_tune_subset=5_000, fine_tune_lr=0.01, quantize=None, output=str(out), dtype=None,
        json=args.json, no_progress=args.no_progress, quiet=False, no_latency=False, ray=None, checkpoint_dir=None,
        calibration="one-pass", weighting="uniform",
        budget_scope="model", text=None, test_text=None, seq_len=128,
    )
