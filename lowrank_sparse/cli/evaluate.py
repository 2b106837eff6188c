"""``lowrank-sparse evaluate``: accuracy (or fidelity), parameters, MACs and CPU latency
of a saved model on the test split of its data set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import measure
from .args import DATASETS, positive_int
from .output import CLIError, emit, read_saved
from .sources import evaluation_data, input_shape

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``evaluate`` subparser to ``sub`` (argparse's subparsers action)."""
    e = sub.add_parser("evaluate", help="accuracy/fidelity, parameters, MACs and CPU latency of a saved model")
    e.add_argument("path", help=".safetensors file written by lowrank_sparse.save / compress")
    e.add_argument("--dataset", choices=DATASETS, help="default: the data set recorded in the file")
    e.add_argument("--test-subset", type=positive_int)
    e.add_argument("--test-text", metavar="FILE",
                   help="a Hugging Face model's file: held-out text (default: built-in English prose)")
    e.add_argument("--batch", type=positive_int, default=64, help="batch size of the latency measurement")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the file, measure it, print text or JSON."""
    from .. import io as _io

    path = Path(args.path)
    meta = read_saved(path, _io.read_metadata)
    if "hf_folder" in meta.get("user", {}):  # a Hugging Face model: rebuilt from its folder
        from .hf import run_evaluate

        return run_evaluate(args, path, meta["user"])
    model = read_saved(args.path, _io.load)
    dataset = args.dataset or meta.get("user", {}).get("dataset")
    if dataset is None:
        raise CLIError(f"{args.path} does not say which data set it was trained on: pass --dataset")
    shape = input_shape(dataset)
    x, y = evaluation_data(dataset, args.test_subset, 0)
    result: dict[str, Any] = {"file": str(path), "file_bytes": path.stat().st_size, "dataset": dataset}
    if dataset == "imagenet_samples":
        from .. import models as _models

        result["fidelity"] = measure.fidelity(model, _models.pretrained_mobilenet_v2().eval(), x)
    else:
        result["accuracy"] = measure.accuracy(model, x, y)
    result.update(measure.summary(model, shape))
    from ..nn.execution import plan_execution

    plan = plan_execution(model, measure.seeded_batch(shape, args.batch))
    result["execution"] = plan.forms()
    result["memory_format"] = plan.memory_format
    result["latency_ms"] = measure.latency_ms(model, shape, args.batch)
    result["latency_batch"] = args.batch
    emit(args, result, _text(path, dataset, result, n_images=len(y), batch=args.batch))
    return 0


def _text(path: Path, dataset: str, result: dict[str, Any], n_images: int, batch: int) -> str:
    lines = [f"{path} ({result['file_bytes']:,d} bytes, data set {dataset})"]
    if "accuracy" in result:
        lines.append(f"accuracy     {result['accuracy']:.2%} on {n_images} test images")
    else:
        f = result["fidelity"]
        lines.append(f"fidelity     top-1 agreement {f['top1_agreement']:.2%}, KL {f['kl']:.4f} vs the original")
    lines.append(f"parameters   {result['params']:,d}")
    lines.append(f"MACs/sample  {result['macs']:,d}")
    merged = sum(f == "dense" for f in result["execution"].values())
    lines.append(f"CPU latency  {result['latency_ms']:.2f} ms per batch of {batch} (median of 30; execution plan: "
                 f"{merged} of {len(result['execution'])} compressed layers run merged; "
                 f"{result['memory_format']} memory format)")
    return "\n".join(lines)
