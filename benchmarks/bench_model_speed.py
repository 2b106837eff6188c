"""End-to-end CPU latency of compressed models at deployment shapes, against the dense model.

Each cell: ``lowrank_sparse.compress`` to a budget, the execution planner
(:func:`lowrank_sparse.nn.execution.plan_execution`) run at the batch being timed, then
the dense and the compressed model timed paired and interleaved in the same process
(``--rounds`` rounds, the order alternating, 2 warm-up calls each), on ``--threads``
threads: medians, and the median with the interquartile range of the per-round ratio
compressed / dense.  Each model runs in the memory format it is fastest in at that batch
(the planner's choice for the compressed model,
:func:`lowrank_sparse.nn.execution.choose_memory_format` for a copy of the dense one),
and freed activation memory stays in the heap (``lowrank_sparse._allocator``), as under
the command line.  Quality beside the time:

* **VGG-16** (``lowrank_sparse.models``, 10 classes) at 224x224: random weights with a
  decaying spectrum (singular values ~ i^-0.8, as in ``bench_export``), calibrated on 8
  seeded normal images; latency only (the values do not matter for time), with the
  relative output error on 8 other images.  ``Budget(macs=0.25)`` (rank-only and L + S
  with row-structured S) and ``Budget(latency=0.5)``.
* **MobileNetV2**, real ImageNet weights, the 20 shipped ImageNet images for calibration
  and top-1 agreement with the dense model on them.  ``Budget(params=0.5)`` and
  ``Budget(latency=0.5)``.
* **all-MiniLM-L6-v2**, real weights, sequence 128, 16 calibration sentences of the
  built-in English text; mean-pooled embedding cosine on 16 held-out sentences.
  ``Budget(params=0.5, scope="layers")`` (half the encoder's linear weights), the same
  with ``latency=0.7`` beside it (both hold), and ``Budget(latency=0.5)``.

    python benchmarks/bench_model_speed.py                   # all cells, batch 1 and 8
    python benchmarks/bench_model_speed.py --models minilm --batches 1
    python benchmarks/bench_model_speed.py --models vgg16 --cells "macs 0.25"   # cells whose label has it
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import copy  # noqa: E402

import lowrank_sparse as lrs  # noqa: E402
from lowrank_sparse import models  # noqa: E402
from lowrank_sparse._allocator import keep_freed_memory  # noqa: E402
from lowrank_sparse.budget import Budget, LatencyModel  # noqa: E402
from lowrank_sparse.nn.counts import model_macs, model_params  # noqa: E402
from lowrank_sparse.nn.execution import choose_memory_format, plan_execution  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "model_speed_cpu"


# ----------------------------------------------------------------------------- models
def vgg16_224() -> dict[str, Any]:
    from bench_export import decaying_weight

    g = torch.Generator().manual_seed(0)
    dense = models.build("vgg16", in_channels=3, num_classes=10, width=1).eval()
    with torch.no_grad():
        for mod in dense.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                w = mod.weight
                w.copy_(decaying_weight(w.shape[0], w[0].numel(), g).view_as(w))
    calib = torch.randn(8, 3, 224, 224, generator=g)
    test = torch.randn(8, 3, 224, 224, generator=g)
    return {"name": "vgg16 224x224 (decaying-spectrum random weights)", "dense": dense, "calib": calib,
            "example": lambda b: test[:b], "quality": lambda d, c: {"rel_output_error": _rel(d, c, test)},
            "macs_shape": (3, 224, 224)}


def mobilenet_v2() -> dict[str, Any]:
    from lowrank_sparse import data

    dense = models.pretrained_mobilenet_v2().eval()
    x, _ = data.imagenet_samples()
    return {"name": "mobilenet_v2 224x224 (ImageNet weights)", "dense": dense, "calib": x,
            "example": lambda b: x[:b], "quality": lambda d, c: {"top1_agreement": _agree(d, c, x)},
            "macs_shape": (3, 224, 224)}


def minilm() -> dict[str, Any]:
    from bench_latency_budget import Encoder, _batches, _cosine, _load

    bert, tok, what = _load()
    calib = _batches(tok, "calibration", 128, 8, 2)
    test = _batches(tok, "test", 128, 8, 2)
    dicts = [{"input_ids": i, "attention_mask": m} for i, m in calib]
    return {"name": f"{what}, seq 128", "dense": bert, "calib": dicts, "wrap": Encoder,
            "example": lambda b: (calib[0][0][:b], calib[0][1][:b]),
            "quality": lambda d, c: {"cosine_mean_pooled": _cosine(Encoder(d).eval(), Encoder(c).eval(), test)},
            "macs_shape": (128,)}


MODELS: dict[str, Callable[[], dict[str, Any]]] = {"vgg16": vgg16_224, "mobilenet_v2": mobilenet_v2, "minilm": minilm}

#: (label, compress keywords) per model; "latency" cells get a LatencyModel at run time
CELLS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "vgg16": [("macs 0.25, rank-only", {"target": Budget(macs=0.25), "method": "rank_only"}),
              ("macs 0.25, L + S (row S)", {"target": Budget(macs=0.25), "structure": "row"}),
              ("latency 0.5", {"latency": 0.5, "method": "rank_only"})],
    "mobilenet_v2": [("params 0.5", {"target": Budget(params=0.5)}), ("latency 0.5", {"latency": 0.5})],
    "minilm": [("params 0.5 of the layers", {"target": Budget(params=0.5, scope="layers")}),
               ("latency 0.5", {"latency": 0.5}),
               ("params 0.5 of the layers + latency 0.7",
                {"target": Budget(params=0.5, scope="layers"), "latency": 0.7})],
}


def _rel(dense: nn.Module, comp: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        a, b = dense(x), comp(x)
    return float((a - b).norm() / a.norm())


def _agree(dense: nn.Module, comp: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((dense(x).argmax(1) == comp(x).argmax(1)).float().mean())


# ----------------------------------------------------------------------------- timing
def paired(a: nn.Module, b: nn.Module, x: Any, rounds: int) -> dict[str, Any]:
    """Interleaved forward times (ms) of a and b on x; ratio = b / a per round."""
    args = x if isinstance(x, tuple) else (x,)
    ta: list[float] = []
    tb: list[float] = []
    with torch.inference_mode():
        for _ in range(2):
            a(*args), b(*args)
        for r in range(rounds):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                (a, b)[which](*args)
                (ta, tb)[which].append(1e3 * (time.perf_counter() - t0))
    ratios = [y / x_ for x_, y in zip(ta, tb)]
    q = statistics.quantiles(ratios, n=4)
    return {"ms_dense": statistics.median(ta), "ms_compressed": statistics.median(tb),
            "ratio": statistics.median(ratios), "ratio_iqr": [q[0], q[2]], "speedup": 1 / statistics.median(ratios),
            "rounds": rounds}


def _compress(spec: dict[str, Any], kw: dict[str, Any], max_iter: int) -> tuple[nn.Module, Any, float, Any]:
    kw = dict(kw)
    lm = None
    if "latency" in kw:
        example = spec["calib"][0] if isinstance(spec["calib"], list) else spec["calib"][:8]
        lm = LatencyModel.of_model(spec["dense"], example)
        base = kw.pop("target", None)  # a size budget given beside the latency one: both hold
        kw["target"] = (Budget(latency=kw.pop("latency"), latency_model=lm) if base is None else
                        dataclasses.replace(base, latency=kw.pop("latency"), latency_model=lm))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp, report = lrs.compress(spec["dense"], spec["calib"], max_iter=max_iter, progress=False, **kw)
    return comp.eval(), report, time.perf_counter() - t0, lm


def run_cell(key: str, spec: dict[str, Any], label: str, kw: dict[str, Any], batches: list[int], rounds: int,
             max_iter: int) -> dict[str, Any]:
    try:
        comp, report, seconds, lm = _compress(spec, kw, max_iter)
    except ValueError as err:  # an infeasible target is a result, reported
        return {"model": key, "cell": label, "result": "infeasible", "error": str(err).splitlines()[0]}
    wrap = spec.get("wrap", lambda m: m)
    dense_w, comp_w = wrap(spec["dense"]).eval(), wrap(comp).eval()
    shape = spec["macs_shape"]
    row: dict[str, Any] = {
        "model": key, "name": spec["name"], "cell": label, "compress_seconds": seconds,
        "params_ratio": model_params(comp) / model_params(spec["dense"]),
        "macs_ratio": model_macs(comp, shape) / model_macs(spec["dense"], shape),
        **spec["quality"](spec["dense"], comp), "batches": {}}
    if lm is not None and lm.prediction is not None:
        row["latency_predicted_ratio"] = lm.prediction["ratio"]
    dense_w = copy.deepcopy(dense_w)  # its layout is set per batch; the spec's model stays as it is
    for b in batches:
        x = spec["example"](b)
        plan = plan_execution(comp_w, x)
        dense_format, _ = choose_memory_format(dense_w, x)
        forms = plan.forms()
        row["batches"][str(b)] = {**paired(dense_w, comp_w, x, rounds),
                                  "layers_pair": sum(f == "pair" for f in forms.values()), "layers": len(forms),
                                  "memory_format": {"dense": dense_format, "compressed": plan.memory_format}}
    return row


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    loads = {r["model"]: r.get("run", meta) for r in rows}
    per_model = "; ".join(f"{m} {run['load_start']} -> {run['load_end']}" for m, run in loads.items())
    out = [f"Machine: {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, "
           f"{meta['rounds']} paired rounds per cell; load average at the start and end of each model's run: "
           f"{per_model}.",
           "", "| model | budget | params | MACs | quality | batch | dense ms | compressed ms | speedup [IQR] | "
           "layers run as L + S | memory format (dense / compressed) | compress s |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if r.get("result") == "infeasible":
            out.append(f"| {r['model']} | {r['cell']} | - | - | infeasible: {r['error'][:80]} | | | | | | | |")
            continue
        q = ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k in ("rel_output_error", "top1_agreement",
                                                                     "cosine_mean_pooled"))
        for b, t in r["batches"].items():
            lo, hi = (1 / t["ratio_iqr"][1], 1 / t["ratio_iqr"][0])
            out.append(f"| {r['model']} | {r['cell']} | {r['params_ratio']:.3f} | {r['macs_ratio']:.3f} | {q} | {b} | "
                       f"{t['ms_dense']:.1f} | {t['ms_compressed']:.1f} | {t['speedup']:.2f}x [{lo:.2f}, {hi:.2f}] | "
                       f"{t['layers_pair']} / {t['layers']} | {_formats(t)} | {r['compress_seconds']:.0f} |")
    return "\n".join(out) + "\n"


def _formats(t: dict[str, Any]) -> str:
    f = t.get("memory_format")  # rows measured before the layout choice existed have none
    return "contiguous / contiguous (not chosen)" if f is None else f"{f['dense']} / {f['compressed']}"


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--cells", default="", help="run only the cells whose label contains this text")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    meta = {"machine": f"{platform.processor() or platform.machine()}", "torch": torch.__version__,
            "threads": args.threads, "rounds": args.rounds, "load_start": _load()}
    rows = []
    for key in args.models:
        spec = MODELS[key]()
        for label, kw in CELLS[key]:
            if args.cells not in label:
                continue
            row = run_cell(key, spec, label, kw, args.batches, args.rounds, args.max_iter)
            print(json.dumps(row), flush=True)
            rows.append(row)
    meta["load_end"] = _load()
    rows, meta = _merge(Path(args.out + ".json"), rows, meta)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    Path(args.out + ".md").write_text(_markdown(rows, meta))


def _merge(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """This run's rows added to the saved ones of the cells it did not run (a run with
    ``--models minilm`` keeps the VGG-16 rows, one with ``--cells`` the model's other
    cells); each row carries the meta of the run that measured it."""
    for r in rows:
        r["run"] = dict(meta)
    if not path.exists():
        return rows, meta
    saved = json.loads(path.read_text())
    ran = {(r["model"], r["cell"]) for r in rows}
    kept = [dict(r, run=r.get("run", saved.get("meta", {}))) for r in saved["rows"]
            if (r["model"], r["cell"]) not in ran]
    return kept + rows, meta


if __name__ == "__main__":
    main()
