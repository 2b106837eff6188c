"""``lowrank-sparse demo``: the built-in default run, end to end on real data."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from . import compress, evaluate
from .args import fraction, positive_int
from .output import log

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``demo`` subparser to ``sub`` (argparse's subparsers action)."""
    d = sub.add_parser("demo", help="the built-in default: small CNN on real Fashion-MNIST, compressed to 25%% of its parameters")
    d.add_argument("--params", type=fraction, default=0.25, help="fraction of parameters to keep (default 0.25)")
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
    """Train (or load from the cache) a small CNN on real Fashion-MNIST, compress it to
    a quarter of its parameters with activation-aware L+S, and show what changed."""
    dataset = _dataset(args)
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="lrs-demo-")) / "small_cnn_lrs.safetensors"
    t0 = time.perf_counter()
    rc = compress.run(_compress_args(args, dataset, out))
    if rc == 0:
        ev = argparse.Namespace(path=str(out), dataset=dataset, test_subset=args.test_subset, batch=64, json=args.json)
        log(args, "\nevaluating the saved file:")
        rc = evaluate.run(ev)
        log(args, f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc


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
