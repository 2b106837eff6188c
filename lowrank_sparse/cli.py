"""Command line: ``lowrank-sparse compress | evaluate | report | demo``.

Every subcommand has ``--help``; bad arguments exit with code 2 and a one-line reason
on stderr; ``--json`` prints one machine-readable JSON object on stdout instead of the
human-readable text.  Progress bars (tqdm) appear only on a terminal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser", "CLIError"]

#: Built-in models that :func:`lowrank_sparse.train.get_trained` can train on the 32x32
#: data sets, and the pretrained ImageNet MobileNetV2.
DATASETS = ("fashion_mnist", "mnist", "digits", "imagenet_samples")


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


# --------------------------------------------------------------------------- helpers


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not (0.0 < v <= 1.0) or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return v


def _int_at_least(lo: int) -> Any:
    """argparse type: an integer >= ``lo``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def parse_quantize(text: str) -> dict[str, Any]:
    """Parse ``aq:M=2,K=256[,d=8,beam=8,shared=1]`` into AQConfig keyword arguments."""
    if not text.startswith("aq"):
        raise argparse.ArgumentTypeError(f"--quantize must look like 'aq:M=2,K=256', got {text!r}")
    rest = text[2:]
    if rest and not rest.startswith(":"):
        raise argparse.ArgumentTypeError(f"--quantize must look like 'aq:M=2,K=256', got {text!r}")
    out: dict[str, Any] = {}
    allowed = {"M": int, "K": int, "d": int, "beam": int, "iters": int, "shared": int}
    for part in filter(None, rest[1:].split(",")):
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            raise argparse.ArgumentTypeError(
                f"--quantize: unknown or malformed item {part!r} (allowed keys: {', '.join(allowed)})"
            )
        try:
            out[key] = allowed[key](val)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--quantize: {key} must be an integer, got {val!r}") from None
    if "shared" in out:
        out["shared"] = bool(out["shared"])
    return out


def _progress_flag(args: argparse.Namespace) -> Optional[bool]:
    if getattr(args, "no_progress", False) or getattr(args, "json", False):
        return False
    return None  # tqdm decides: only on a terminal


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=_jsonable))
    else:
        print(text)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _log(args: argparse.Namespace, msg: str) -> None:
    if not args.json and not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def _input_shape(dataset: str) -> tuple[int, ...]:
    from . import data as _data

    if dataset == "imagenet_samples":
        return (3, 224, 224)
    info = _data.DATASETS[dataset]
    return (info.in_channels, info.input_size, info.input_size)


@dataclass
class Loaded:
    """A model ready to compress/evaluate, with where it came from."""

    model: Any
    arch: Optional[dict[str, Any]]
    dataset: str
    source: str


def _load_model(spec: str, dataset: str, schedule: str, seed: int, checkpoint: Optional[str],
                progress: Optional[bool]) -> Loaded:
    """A built-in name (trained on ``dataset`` and cached), a checkpoint for a built-in
    architecture, or a file written by lowrank_sparse.save."""
    import torch

    from . import io as _io
    from . import models as _models
    from . import train as _train

    path = Path(spec)
    if spec.endswith(".safetensors") and path.exists() and checkpoint is None:
        model = _io.load(path)
        meta = _io.read_metadata(path)
        return Loaded(model, meta.get("arch"), meta.get("user", {}).get("dataset", dataset), str(path))
    if spec not in _models.list_models():
        raise CLIError(
            f"model {spec!r} is neither a built-in model ({', '.join(_models.list_models())}) "
            "nor an existing .safetensors file written by lowrank_sparse.save"
        )
    if spec == "mobilenet_v2":
        if dataset != "imagenet_samples":
            raise CLIError("mobilenet_v2 is the ImageNet model: use --dataset imagenet_samples")
        model = _models.pretrained_mobilenet_v2()
        return Loaded(model.eval(), {"name": "mobilenet_v2", "kwargs": {}}, dataset, "pretrained ImageNet weights")
    if dataset == "imagenet_samples":
        raise CLIError(f"data set imagenet_samples needs model mobilenet_v2, not {spec!r}")
    kwargs, _ = _train._recipe(spec, dataset, schedule)
    arch = {"name": spec, "kwargs": kwargs}
    if checkpoint is not None:
        model = _models.build(spec, **kwargs)
        ck = Path(checkpoint)
        if not ck.is_file():
            raise CLIError(f"checkpoint {checkpoint} does not exist")
        try:
            if ck.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(ck))
            else:
                state = torch.load(str(ck), map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except Exception as e:  # noqa: BLE001 - any loading problem is the user's file
            raise CLIError(f"checkpoint {checkpoint} does not fit {spec} ({str(e).splitlines()[0]})") from None
        return Loaded(model.eval(), arch, dataset, str(ck))
    was_cached = _train.checkpoint_path(spec, dataset, schedule, seed).is_file()
    model = _train.get_trained(spec, dataset, schedule, seed, progress=progress)
    how = "from cache" if was_cached else "trained now, cached"
    return Loaded(model.eval(), arch, dataset, f"trained ({schedule} schedule, seed {seed}, {how})")


def _test_data(dataset: str, n: Optional[int], seed: int) -> tuple[Any, Any]:
    """(inputs, labels) of the test split (a seeded subset of n if given)."""
    from . import data as _data

    if dataset == "imagenet_samples":
        return _data.imagenet_samples()
    ds = _data.load(dataset, "test", subset=n if n is not None and n < _test_len(dataset) else None, seed=seed)
    if hasattr(ds, "tensors") and callable(ds.tensors):
        return ds.tensors()
    return ds.tensors  # TensorDataset


def _test_len(dataset: str) -> int:
    return {"fashion_mnist": 10_000, "mnist": 10_000, "digits": 450}.get(dataset, 20)


def _calibration(dataset: str, n: int, seed: int) -> Any:
    from . import data as _data

    if dataset == "imagenet_samples":
        x, _ = _data.imagenet_samples()
        return x[:n]
    ds = _data.load(dataset, "train")
    return _data.calibration_batch(ds, min(n, len(ds)), seed=seed)


def _latency_ms(model: Any, shape: tuple[int, ...], batch: int, runs: int = 30) -> float:
    """Median wall time (ms) of one forward pass on a batch, CPU, no grad."""
    import torch

    x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _paired_latency(a: Any, b: Any, shape: tuple[int, ...], batch: int, runs: int = 20) -> tuple[float, float]:
    """Median forward time (ms) of two models on the same batch, runs interleaved so that
    machine load affects both alike."""
    import torch

    x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(0))
    ta: list[float] = []
    tb: list[float] = []
    a.eval()
    b.eval()
    with torch.inference_mode():
        for _ in range(2):
            a(x)
            b(x)
        for _ in range(runs):
            for model, acc in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                model(x)
                acc.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ta), statistics.median(tb)


def _accuracy(model: Any, x: Any, y: Any) -> float:
    from . import train as _train

    return _train.evaluate(model, (x, y))


def _fidelity(model: Any, reference: Any, x: Any) -> dict[str, float]:
    """Top-1 agreement and mean KL(reference || model) of the softmax outputs."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        a = reference(x).float()
        b = model(x).float()
    agree = float((a.argmax(1) == b.argmax(1)).float().mean())
    kl = float(F.kl_div(F.log_softmax(b, 1), F.log_softmax(a, 1), log_target=True, reduction="batchmean"))
    return {"top1_agreement": agree, "kl": kl}


def _summary(model: Any, shape: tuple[int, ...]) -> dict[str, int]:
    from .nn import counts

    return {"params": int(counts.model_params(model)), "flops": int(counts.model_flops(model, shape))}


# --------------------------------------------------------------------------- compress


def cmd_compress(args: argparse.Namespace) -> int:
    import torch

    from .compress import compress as _compress
    from . import io as _io
    from .budget import Budget

    if args.params is None and args.flops is None and args.rank is None and args.density is None:
        raise CLIError("give a target (--params and/or --flops) or explicit --rank/--density")
    if (args.params is not None or args.flops is not None) and (args.rank is not None or args.density is not None):
        raise CLIError("--params/--flops (a budget) and --rank/--density (explicit sizes) exclude each other")
    torch.manual_seed(args.seed)
    progress = _progress_flag(args)
    src = _load_model(args.model, args.dataset, args.schedule, args.seed, args.checkpoint, progress)
    shape = _input_shape(src.dataset)
    _log(args, f"model: {args.model} ({src.source}); data: {src.dataset}")
    calib = _calibration(src.dataset, args.calib, args.seed)
    target = None
    if args.params is not None or args.flops is not None:
        target = Budget(params=args.params, flops=args.flops)
    t0 = time.perf_counter()
    new, report = _compress(
        src.model,
        calib,
        target,
        allocation=args.allocation,
        rank=args.rank,
        density=args.density,
        structure=args.structure,
        method=args.method,
        exclude=args.exclude or None,
        keep_first_last=not args.all_layers,
        max_iter=args.max_iter,
        seed=args.seed,
        progress=progress,
        sample_size=args.sample_size,
    )
    seconds = time.perf_counter() - t0
    x_test, y_test = _test_data(src.dataset, args.test_subset, args.seed)
    result: dict[str, Any] = {"model": args.model, "dataset": src.dataset, "compress_seconds": seconds}
    if src.dataset == "imagenet_samples":
        result["fidelity"] = _fidelity(new, src.model, x_test)
    else:
        result["accuracy_before"] = _accuracy(src.model, x_test, y_test)
        result["accuracy_after"] = _accuracy(new, x_test, y_test)
    if args.fine_tune:
        from . import data as _data
        from . import train as _train

        if src.dataset == "imagenet_samples":
            raise CLIError("--fine-tune needs a training set; imagenet_samples has only 20 images")
        ds = _data.load(src.dataset, "train")
        if args.fine_tune_subset < len(ds):  # a seeded subset; the whole split when it is smaller
            ds = _data.load(src.dataset, "train", subset=args.fine_tune_subset, seed=args.seed)
        _train.fine_tune(new, ds, epochs=args.fine_tune, lr=args.fine_tune_lr, seed=args.seed, progress=progress)
        new.eval()
        result["accuracy_fine_tuned"] = _accuracy(new, x_test, y_test)
    if args.quantize is not None:
        from .quant import AQConfig, fine_tune_codebooks, quantize_model

        cfg = AQConfig(**args.quantize)
        new = quantize_model(new, cfg, which="factors+sparse")
        if args.fine_tune and src.dataset != "imagenet_samples":
            import torch.nn.functional as F

            batches = _data.loader(ds, 128, shuffle=True, seed=args.seed)
            fine_tune_codebooks(new, batches, F.cross_entropy, epochs=1, lr=1e-3)
            new.eval()
        result["accuracy_quantized"] = _accuracy(new, x_test, y_test) if src.dataset != "imagenet_samples" else None
    result.update({"before": _summary(src.model, shape), "after": _summary(new, shape)})
    if not args.no_latency:
        result["latency_ms_before"], result["latency_ms_after"] = _paired_latency(src.model, new, shape, 64)
    meta = {"dataset": src.dataset, "report": report.to_dict(), "cli": result}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    _io.save(new, out, metadata={"arch": src.arch, **meta}, dtype=args.dtype)
    result["file"] = str(out)
    result["file_bytes"] = out.stat().st_size
    result["file_parts"] = _io.file_report(out)
    result["report"] = report.to_dict()
    lines = [report.table(), ""]
    b, a = result["before"], result["after"]
    lines.append(f"parameters  {b['params']:>12,d} -> {a['params']:>12,d}  ({a['params'] / b['params']:.1%})")
    lines.append(f"MACs/sample {b['flops']:>12,d} -> {a['flops']:>12,d}  ({a['flops'] / b['flops']:.1%})")
    if "latency_ms_before" in result:
        lines.append(f"CPU latency {result['latency_ms_before']:>10.2f} ms -> {result['latency_ms_after']:>10.2f} ms"
                     "  (batch 64, median of 20, interleaved)")
    if "accuracy_before" in result:
        lines.append(f"accuracy    {result['accuracy_before']:.2%} -> {result['accuracy_after']:.2%}")
    if "accuracy_fine_tuned" in result:
        lines.append(f"after fine-tuning ({args.fine_tune} epoch(s)): {result['accuracy_fine_tuned']:.2%}")
    if result.get("accuracy_quantized") is not None:
        aq = ",".join(f"{k}={v}" for k, v in args.quantize.items())
        ft = " + 1 epoch of codebook fine-tuning" if args.fine_tune else ""
        lines.append(f"after AQ ({aq}){ft}: {result['accuracy_quantized']:.2%}")
    if "fidelity" in result:
        f = result["fidelity"]
        lines.append(f"fidelity    top-1 agreement {f['top1_agreement']:.2%}, KL {f['kl']:.4f}")
    lines.append(f"saved {out} ({result['file_bytes']:,d} bytes) in {seconds:.1f} s of compression")
    fp = result["file_parts"]
    lines.append("  file bytes: " + ", ".join(f"{k.replace('_', ' ')} {fp[k]:,d}" for k in
                 ("float_values", "indices", "aq_codes", "aq_codebooks", "aq_scales", "header") if fp[k] or k == "header")
                 + " (indices packed; the report's index storage counts the in-memory int32 buffers)")
    _emit(args, result, "\n".join(lines))
    return 0


# --------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import io as _io

    path = Path(args.path)
    if not path.is_file():
        raise CLIError(f"{args.path}: no such file")
    try:
        model = _io.load(path)
    except ValueError as e:
        raise CLIError(str(e)) from None
    meta = _io.read_metadata(path)
    dataset = args.dataset or meta.get("user", {}).get("dataset")
    if dataset is None:
        raise CLIError(f"{args.path} does not say which data set it was trained on: pass --dataset")
    shape = _input_shape(dataset)
    x, y = _test_data(dataset, args.test_subset, 0)
    result: dict[str, Any] = {"file": str(path), "file_bytes": path.stat().st_size, "dataset": dataset}
    if dataset == "imagenet_samples":
        from . import models as _models

        result["fidelity"] = _fidelity(model, _models.pretrained_mobilenet_v2().eval(), x)
    else:
        result["accuracy"] = _accuracy(model, x, y)
    result.update(_summary(model, shape))
    result["latency_ms"] = _latency_ms(model, shape, args.batch)
    result["latency_batch"] = args.batch
    lines = [f"{path} ({result['file_bytes']:,d} bytes, data set {dataset})"]
    if "accuracy" in result:
        lines.append(f"accuracy     {result['accuracy']:.2%} on {len(y)} test images")
    else:
        f = result["fidelity"]
        lines.append(f"fidelity     top-1 agreement {f['top1_agreement']:.2%}, KL {f['kl']:.4f} vs the original")
    lines.append(f"parameters   {result['params']:,d}")
    lines.append(f"MACs/sample  {result['flops']:,d}")
    lines.append(f"CPU latency  {result['latency_ms']:.2f} ms per batch of {args.batch} (median of 30)")
    _emit(args, result, "\n".join(lines))
    return 0


# --------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from . import io as _io
    from .plots import plot_budget_sweep, plot_layers

    paths = [Path(p) for p in args.paths]
    reports = []
    for p in paths:
        if not p.is_file():
            raise CLIError(f"{p}: no such file")
        try:
            meta = _io.read_metadata(p)
        except ValueError as e:
            raise CLIError(str(e)) from None
        rep = meta.get("user", {}).get("report")
        if rep is None:
            raise CLIError(f"{p} carries no compression report (was it written by 'lowrank-sparse compress'?)")
        reports.append((p, rep, meta.get("user", {}).get("cli", {})))
    written: list[str] = []
    if args.plots:
        outdir = Path(args.plots)
        outdir.mkdir(parents=True, exist_ok=True)
        for p, rep, _ in reports:
            written += [str(f) for f in plot_layers(rep, outdir / p.stem)]
        if len(reports) > 1:
            written.append(str(plot_budget_sweep([(str(p), rep, cli) for p, rep, cli in reports], outdir / "accuracy_vs_budget.png")))
    payload = {"reports": [{"file": str(p), "report": rep, "result": cli} for p, rep, cli in reports], "plots": written}
    lines = []
    for p, rep, cli in reports:
        lines.append(f"== {p}")
        lines.append(_report_table(rep))
        if "accuracy_after" in cli:
            lines.append(f"accuracy {cli['accuracy_before']:.2%} -> {cli['accuracy_after']:.2%}")
        lines.append("")
    if written:
        lines.append("plots: " + ", ".join(written))
    _emit(args, payload, "\n".join(lines).rstrip())
    return 0


def _report_table(rep: dict[str, Any]) -> str:
    rows = [("layer", "kind", "shape", "act", "rank", "density", "params", "ratio", "error")]
    for lay in rep.get("layers", []):
        shape = "x".join(str(s) for s in lay.get("shape", []))
        pb, pa = lay.get("params_before") or 0, lay.get("params_after") or 0
        err = lay.get("output_error_after")
        rows.append(
            (
                str(lay.get("name")),
                str(lay.get("kind")),
                shape,
                str(lay.get("activation")),
                str(lay.get("rank")),
                f"{lay.get('density') or 0:.3f}",
                f"{pa:,d}",
                f"{pa / pb:.2f}" if pb else "-",
                "-" if err is None else f"{err:.4f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Train (or load from the cache) a small CNN on real Fashion-MNIST, compress it to
    a quarter of its parameters with activation-aware L+S, and show what changed."""
    from . import data as _data

    dataset = "fashion_mnist"
    try:
        _data.fashion_mnist("test")
    except (FileNotFoundError, RuntimeError, ValueError):
        dataset = "mnist"
        _log(args, "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): using MNIST")
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="lrs-demo-")) / "small_cnn_lrs.safetensors"
    ns = argparse.Namespace(
        model="small_cnn", dataset=dataset, schedule="cpu", seed=0, checkpoint=None, calib=args.calib,
        params=args.params, flops=None, rank=None, density=None, allocation="alds", structure="unstructured",
        method="lowrank_sparse", exclude=[], all_layers=False, max_iter=args.max_iter, sample_size=args.sample_size,
        test_subset=args.test_subset,
        fine_tune=0, fine_tune_subset=5_000, fine_tune_lr=0.01, quantize=None, output=str(out), dtype=None,
        json=args.json, no_progress=args.no_progress, quiet=False, no_latency=False,
    )
    t0 = time.perf_counter()
    rc = cmd_compress(ns)
    if rc == 0:
        ev = argparse.Namespace(path=str(out), dataset=dataset, test_subset=args.test_subset, batch=64, json=args.json)
        _log(args, "\nevaluating the saved file:")
        rc = cmd_evaluate(ev)
        _log(args, f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lowrank-sparse", description="Compress trained PyTorch networks as low-rank + structured-sparse layers.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compress", help="compress a model to a budget and save it (safetensors)")
    c.add_argument("model", help="built-in model name (vgg16, alexnet, googlenet, small_cnn, mlp, mobilenet_v2) or a .safetensors file")
    c.add_argument("-o", "--output", required=True, help="output .safetensors file")
    c.add_argument("--dataset", default="fashion_mnist", choices=DATASETS, help="real data set for calibration and evaluation")
    c.add_argument("--checkpoint", help="trained weights (state dict, .safetensors or .pt) for the built-in architecture")
    c.add_argument("--schedule", default="cpu", choices=("cpu", "gpu"), help="training recipe when no checkpoint is cached")
    c.add_argument("--params", type=_fraction, help="keep this fraction of the model's parameters, e.g. 0.25")
    c.add_argument("--flops", type=_fraction, help="keep this fraction of the model's MACs, e.g. 0.75")
    c.add_argument("--rank", type=float, help="explicit rank for every layer: an int, or a fraction of full rank")
    c.add_argument("--density", type=float, help="explicit density of S for every layer, in [0, 1)")
    c.add_argument("--allocation", default="alds", choices=("alds", "enc", "uniform"))
    c.add_argument("--method", default="lowrank_sparse", choices=("lowrank_sparse", "rank_only", "sparse_only"))
    c.add_argument("--structure", default="unstructured", help="unstructured | row | column | channel | N:M (e.g. 2:4)")
    c.add_argument("--exclude", action="append", help="fnmatch pattern of layer names to keep dense (repeatable)")
    c.add_argument("--all-layers", action="store_true", help="also compress the first and last layers")
    c.add_argument("--calib", type=_positive_int, default=1024, help="calibration images (default 1024)")
    c.add_argument("--max-iter", type=_positive_int, default=300, help="ADMM iteration cap per layer")
    c.add_argument("--sample-size", type=_positive_int, default=8192,
                   help="input columns per layer kept for the activation-aware objective (default 8192)")
    c.add_argument("--fine-tune", type=_nonneg_int, default=0, metavar="EPOCHS", help="fine-tune the compressed model")
    c.add_argument("--fine-tune-subset", type=_positive_int, default=10_000, help="training images for fine-tuning")
    c.add_argument("--fine-tune-lr", type=float, default=0.01)
    c.add_argument("--quantize", type=parse_quantize, help="additive quantization of factors and sparse values, e.g. aq:M=2,K=256")
    c.add_argument("--dtype", choices=("float16", "bfloat16"), help="store floating values in this dtype")
    c.add_argument("--test-subset", type=_positive_int, help="evaluate on a seeded subset of the test split")
    c.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_compress)

    e = sub.add_parser("evaluate", help="accuracy/fidelity, parameters, MACs and CPU latency of a saved model")
    e.add_argument("path", help=".safetensors file written by lowrank_sparse.save / compress")
    e.add_argument("--dataset", choices=DATASETS, help="default: the data set recorded in the file")
    e.add_argument("--test-subset", type=_positive_int)
    e.add_argument("--batch", type=_positive_int, default=64, help="batch size of the latency measurement")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="per-layer table (and PNG plots) of saved compressed models")
    r.add_argument("paths", nargs="+", help="one or more .safetensors files written by compress")
    r.add_argument("--plots", metavar="DIR", help="write PNG plots here (ranks/sparsity, errors, accuracy vs budget)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the built-in default: small CNN on real Fashion-MNIST, compressed to 25%% of its parameters")
    d.add_argument("--params", type=_fraction, default=0.25, help="fraction of parameters to keep (default 0.25)")
    d.add_argument("--calib", type=_positive_int, default=512, help="calibration images (default 512)")
    d.add_argument("--max-iter", type=_positive_int, default=100, help="ADMM iteration cap per layer (default 100)")
    d.add_argument("--sample-size", type=_positive_int, default=4096, help="input columns per layer (default 4096)")
    d.add_argument("--test-subset", type=_positive_int, default=2000,
                   help="evaluate on a seeded subset of the 10,000 test images (default 2000)")
    d.add_argument("-o", "--output", help="where to save the compressed model (default: a temp dir)")
    d.add_argument("--json", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as e:
        print(f"lowrank-sparse {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"lowrank-sparse {args.command}: error: {first}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
