"""``lowrank-sparse compress``: compress a model to a budget (or explicit sizes), score
it on the test split, optionally fine-tune and quantize it, and save it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional

from ..compress.methods import method_names
from . import hf, measure
from .args import CALIBRATION_MODES, DATASETS, RenamedOnce, calibration_config, fraction, nonneg_int, parse_quantize, positive_int, rank_value
from .output import CLIError, emit, log, progress_flag
from .sources import Loaded, calibration, evaluation_data, input_shape, load_model

__all__ = ["register", "run"]

_IMAGENET = "imagenet_samples"
#: batch of the end-of-run latency measurement (and of --latency's per-layer timings)
LATENCY_BATCH = 64


def register(sub: Any) -> None:
    """Add the ``compress`` subparser to ``sub`` (argparse's subparsers action)."""
    c = sub.add_parser("compress", help="compress a model to a budget and save it (safetensors)")
    c.add_argument("model", help="built-in model name (vgg16, alexnet, googlenet, small_cnn, mlp, mobilenet_v2), "
                                 "a .safetensors file, or a local Hugging Face model folder")
    c.add_argument("-o", "--output", required=True, help="output .safetensors file")
    c.add_argument("--dataset", default="fashion_mnist", choices=DATASETS, help="real data set for calibration and evaluation")
    c.add_argument("--checkpoint", help="trained weights (state dict, .safetensors or .pt) for the built-in architecture")
    c.add_argument("--schedule", default="cpu", choices=("cpu", "gpu"), help="training recipe when no checkpoint is cached")
    c.add_argument("--params", type=fraction, help="keep this fraction of the model's parameters, e.g. 0.25")
    c.add_argument("--macs", type=fraction, action=RenamedOnce,
                   help="keep this fraction of the model's multiply-accumulates (MACs), e.g. 0.75")
    c.add_argument("--flops", dest="macs", type=fraction, action=RenamedOnce, help=argparse.SUPPRESS)  # old --macs
    # default SUPPRESS: absent from the namespace unless given (demo.py builds compress's namespace by hand)
    c.add_argument("--latency", type=fraction, default=argparse.SUPPRESS,
                   help="keep this fraction of the dense model's CPU time, measured per layer on this machine "
                        "(batch 64, the current thread count), e.g. 0.5")
    c.add_argument("--budget-scope", choices=("model", "layers"), default="model",
                   help="what --params/--macs are fractions of: the whole model (default) or the compressed layers' weights")
    c.add_argument("--weighting", choices=("uniform", "sensitivity"), default="uniform",
                   help="how the allocator compares layers: each layer's own relative error (default) or each "
                        "weighted by how much of it reaches the model's output (measured on the calibration data)")
    c.add_argument("--rank", type=rank_value, help="explicit rank for every layer: an int, or a fraction of full rank")
    c.add_argument("--density", type=float, help="explicit density of S for every layer, in [0, 1)")
    c.add_argument("--allocation", default="alds", choices=("alds", "enc", "uniform"))
    c.add_argument("--method", default="lowrank_sparse", choices=method_names())
    c.add_argument("--structure", default="unstructured", help="unstructured | row | column | channel | N:M (e.g. 2:4)")
    c.add_argument("--exclude", action="append", help="fnmatch pattern of layer names to keep dense (repeatable)")
    c.add_argument("--all-layers", action="store_true", help="also compress the first and last layers")
    c.add_argument("--calib", type=positive_int,
                   help="calibration images (default 1024) or, for a model folder, text sequences (default 128)")
    c.add_argument("--text", metavar="FILE", help="model folder: calibration text, paragraphs separated by blank lines "
                                                  "(default: built-in English prose)")
    c.add_argument("--test-text", metavar="FILE", help="model folder: held-out text for the fidelity / perplexity score")
    c.add_argument("--seq-len", type=positive_int, default=128, help="model folder: tokens per sequence (default 128)")
    c.add_argument("--calibration", choices=CALIBRATION_MODES, default="one-pass",
                   help="one-pass: every layer fitted on the dense model's inputs (default); sequential: each on "
                        "the inputs of the already compressed layers before it; corrected: sequential, fitted to "
                        "the dense model's output (error-corrected targets)")
    c.add_argument("--max-iter", type=positive_int, default=300, help="ADMM iteration cap per layer")
    c.add_argument("--sample-size", type=positive_int, default=8192,
                   help="input columns per layer kept for the activation-aware objective (default 8192)")
    c.add_argument("--fine-tune", type=nonneg_int, default=0, metavar="EPOCHS", help="fine-tune the compressed model")
    c.add_argument("--fine-tune-subset", type=positive_int, default=10_000, help="training images for fine-tuning")
    c.add_argument("--fine-tune-lr", type=float, default=0.01)
    c.add_argument("--quantize", type=parse_quantize, help="additive quantization of factors and sparse values, e.g. aq:M=2,K=256")
    c.add_argument("--dtype", choices=("float16", "bfloat16"), help="store floating values in this dtype")
    c.add_argument("--test-subset", type=positive_int, help="evaluate on a seeded subset of the test split")
    c.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    c.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="solve the layers as Ray tasks: on a local cluster (no ADDRESS) or the cluster at ADDRESS")
    c.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write every finished layer to DIR; a rerun with the same DIR resumes (same result)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compress, score, (fine-tune, quantize,) save; print the report and a summary."""
    import torch

    _check_target(args)
    torch.manual_seed(args.seed)
    if hf.is_hf_folder(args.model):
        return hf.run_compress(args)
    if args.text is not None or args.test_text is not None:
        raise CLIError("--text / --test-text need a Hugging Face model folder as the model")
    args.calib = args.calib or 1024
    progress = progress_flag(args)
    src = load_model(args.model, args.dataset, args.schedule, args.seed, args.checkpoint, progress)
    shape = input_shape(src.dataset)
    log(args, f"model: {args.model} ({src.source}); data: {src.dataset}")
    calib = calibration(src.dataset, args.calib, args.seed)
    t0 = time.perf_counter()
    new, report = _compress(args, src, calib, progress)
    seconds = time.perf_counter() - t0
    x_test, y_test = evaluation_data(src.dataset, args.test_subset, args.seed)
    result: dict[str, Any] = {"model": args.model, "dataset": src.dataset, "compress_seconds": seconds}
    if src.dataset == _IMAGENET:
        result["fidelity"] = measure.fidelity(new, src.model, x_test)
    else:
        result["accuracy_before"] = measure.accuracy(src.model, x_test, y_test)
        result["accuracy_after"] = measure.accuracy(new, x_test, y_test)
    train_set = None
    if args.fine_tune:
        train_set = _fine_tune(args, new, src.dataset, progress)
        result["accuracy_fine_tuned"] = measure.accuracy(new, x_test, y_test)
    if args.quantize is not None:
        new = _quantize(args, new, train_set)
        result["accuracy_quantized"] = measure.accuracy(new, x_test, y_test) if src.dataset != _IMAGENET else None
    result.update({"before": measure.summary(src.model, shape), "after": measure.summary(new, shape)})
    if not args.no_latency:
        _latency(result, src.model, new, shape)
    _predicted_latency(result, getattr(args, "latency_model", None))
    out = _save(args, new, src, report, result)
    emit(args, result, _text(args, result, report, out, seconds))
    return 0


def _latency(result: dict[str, Any], dense: Any, new: Any, shape: tuple[int, ...], batch: int = LATENCY_BATCH) -> None:
    """Plan ``new``'s execution on this machine (each layer in its faster exact form,
    :func:`lowrank_sparse.nn.execution.plan_execution`), then time it against ``dense``,
    paired, with a copy of ``dense`` in its own fastest memory format (so the layout
    alone is not counted as a speed-up); adds latency_*, execution and memory_format
    ({"dense": ..., "compressed": ...}) to ``result``."""
    import copy

    from .._allocator import keep_freed_memory
    from ..nn.execution import choose_memory_format, plan_execution

    example = measure.seeded_batch(shape, batch)
    plan = plan_execution(new, example)
    reference = copy.deepcopy(dense)
    dense_format, _ = choose_memory_format(reference, example)
    lat = measure.paired_latency(reference, new, shape, batch)
    result.update(latency_ms_before=lat["ms_a"], latency_ms_after=lat["ms_b"], latency_ratio=lat["ratio"],
                  latency_ratio_iqr=[lat["ratio_q1"], lat["ratio_q3"]], latency_runs=lat["runs"],
                  latency_batch=batch, execution=plan.forms(),
                  memory_format={"dense": dense_format, "compressed": plan.memory_format},
                  steady_allocator=keep_freed_memory())


def _predicted_latency(result: dict[str, Any], model: Any) -> None:
    """For --latency: the allocator's predicted latency ratio and forms (from the
    LatencyModel the budget carried) beside the measured one."""
    pred = None if model is None else model.prediction
    if pred is not None:
        result["latency_target"] = pred["target"]
        result["latency_ratio_predicted"] = pred["ratio"]
        result["latency_predicted_forms"] = {k: v["form"] for k, v in pred["layers"].items()}


def _check_target(args: argparse.Namespace) -> None:
    """Exactly one of: a budget (--params/--macs), explicit sizes (--rank/--density)."""
    budget = args.params is not None or args.macs is not None or getattr(args, "latency", None) is not None
    explicit = args.rank is not None or args.density is not None
    if not budget and not explicit:
        raise CLIError("give a target (--params, --macs and/or --latency) or explicit --rank/--density")
    if budget and explicit:
        raise CLIError("--params/--macs/--latency (a budget) and --rank/--density (explicit sizes) exclude each other")
    if getattr(args, "latency", None) is not None and args.no_latency:
        raise CLIError("--latency needs the latency measurement; drop --no-latency")


def _compress(args: argparse.Namespace, src: Loaded, calib: Any, progress: Optional[bool]) -> tuple[Any, Any]:
    """lowrank_sparse.compress with the command line's settings -> (new model, report)."""
    from ..budget import Budget
    from ..compress import compress

    target = None
    latency = getattr(args, "latency", None)
    if args.params is not None or args.macs is not None or latency is not None:
        args.latency_model = _latency_model(args, src)
        target = Budget(params=args.params, macs=args.macs, latency=latency, latency_model=args.latency_model,
                        scope=args.budget_scope, weighting=args.weighting)
    return compress(
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
        calibration=calibration_config(args),
        executor=_executor(args),
        checkpoint_dir=args.checkpoint_dir,
    )


def _latency_model(args: argparse.Namespace, src: Loaded) -> Any:
    """For --latency: every layer's input shape on the batch the end-of-run latency is
    measured at (``LATENCY_BATCH`` seeded images) and the dense model's time on it."""
    if getattr(args, "latency", None) is None:
        return None
    from ..budget.latency import LatencyModel

    return LatencyModel.of_model(src.model, measure.seeded_batch(input_shape(src.dataset), LATENCY_BATCH))


def _executor(args: argparse.Namespace) -> Any:
    """--ray [ADDRESS] -> a RayExecutor (local cluster, or the one at ADDRESS); else "serial"."""
    if args.ray is None:
        return "serial"
    try:
        from ..executors.ray import RayExecutor
        import ray  # noqa: F401
    except ImportError:
        raise CLIError("--ray needs ray: pip install 'lowrank_sparse[ray]'") from None
    return RayExecutor(address=args.ray or None)


def _fine_tune(args: argparse.Namespace, model: Any, dataset: str, progress: Optional[bool]) -> Any:
    """Fine-tune ``model`` in place on (a seeded subset of) the training split; returns
    that training set."""
    from .. import data as _data
    from .. import train as _train

    if dataset == _IMAGENET:
        raise CLIError("--fine-tune needs a training set; imagenet_samples has only 20 images")
    ds = _data.load(dataset, "train")
    if args.fine_tune_subset < len(ds):  # a seeded subset; the whole split when it is smaller
        ds = _data.load(dataset, "train", subset=args.fine_tune_subset, seed=args.seed)
    _train.fine_tune(model, ds, epochs=args.fine_tune, lr=args.fine_tune_lr, seed=args.seed, progress=progress)
    model.eval()
    return ds


def _quantize(args: argparse.Namespace, model: Any, train_set: Any) -> Any:
    """Additive quantization of factors and sparse values; with a training set (after
    fine-tuning) one more epoch tunes the codebooks."""
    from .. import data as _data
    from ..quant import AQConfig, fine_tune_codebooks, quantize_model

    new = quantize_model(model, AQConfig(**args.quantize), which="factors+sparse")
    if train_set is not None:
        import torch.nn.functional as F

        batches = _data.loader(train_set, 128, shuffle=True, seed=args.seed)
        fine_tune_codebooks(new, batches, F.cross_entropy, epochs=1, lr=1e-3)
        new.eval()
    return new


def _save(args: argparse.Namespace, model: Any, src: Loaded, report: Any, result: dict[str, Any]) -> Path:
    """Save with the architecture, data set, report and results so far as metadata; add
    the file's name, size and byte breakdown to ``result``."""
    from .. import io as _io

    meta = {"dataset": src.dataset, "report": report.to_dict(), "cli": result}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    _io.save(model, out, metadata={"arch": src.arch, **meta}, dtype=args.dtype)
    result["file"] = str(out)
    result["file_bytes"] = out.stat().st_size
    result["file_parts"] = _io.file_report(out)
    result["report"] = report.to_dict()
    return out


def _formats(formats: dict[str, str]) -> str:
    """'channels_last for both' / 'dense channels_last, compressed contiguous'."""
    if formats["dense"] == formats["compressed"]:
        return f"{formats['dense']} memory format for both"
    return f"memory format: dense {formats['dense']}, compressed {formats['compressed']}"


def _text(args: argparse.Namespace, result: dict[str, Any], report: Any, out: Path, seconds: float) -> str:
    """The human-readable summary: the report's table, sizes, latency, accuracies, file."""
    lines = [report.table(), ""]
    b, a = result["before"], result["after"]
    lines.append(f"parameters  {b['params']:>12,d} -> {a['params']:>12,d}  ({a['params'] / b['params']:.1%})")
    lines.append(f"MACs/sample {b['macs']:>12,d} -> {a['macs']:>12,d}  ({a['macs'] / b['macs']:.1%})")
    if "latency_ms_before" in result:
        q1, q3 = result["latency_ratio_iqr"]
        merged = sum(f == "dense" for f in result["execution"].values())
        lines.append(f"CPU latency {result['latency_ms_before']:>10.2f} ms -> {result['latency_ms_after']:>10.2f} ms"
                     f"  ({result['latency_ratio']:.2f}x dense [{q1:.2f}, {q3:.2f}]; batch {result['latency_batch']}, "
                     f"medians of {result['latency_runs']} paired rounds; execution plan: "
                     f"{merged} of {len(result['execution'])} layers run merged, the others as L + S; "
                     f"{_formats(result['memory_format'])})")
    if "latency_ratio_predicted" in result:
        meas = result.get("latency_ratio")
        lines.append(f"latency budget {result['latency_target']:.2f}: predicted {result['latency_ratio_predicted']:.3f}x "
                     f"dense (per-layer timing tables), measured "
                     + ("-" if meas is None else f"{meas:.3f}x") + " (whole model, paired)")
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
    lines.append(_file_parts_line(result["file_parts"]))
    return "\n".join(lines)


def _file_parts_line(fp: dict[str, int]) -> str:
    """One line: the saved file's bytes by kind (kinds with zero bytes left out)."""
    kinds = ("float_values", "indices", "aq_codes", "aq_codebooks", "aq_scales", "header")
    parts = ", ".join(f"{k.replace('_', ' ')} {fp[k]:,d}" for k in kinds if fp[k] or k == "header")
    return ("  file bytes: " + parts
            + " (indices packed; the report's index storage counts the in-memory int32 buffers)")
