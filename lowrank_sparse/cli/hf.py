"""Hugging Face model folders on the command line: ``compress FOLDER --text FILE`` and
``evaluate`` of the file it writes.

A folder (config.json + weights, loaded with ``local_files_only``) is compressed on
calibration batches cut from a text file (default: the calibration part of
:func:`lowrank_sparse.models.hf.english_text`) and scored on held-out text: the
mean-pooled embedding cosine to the original for encoders, perplexity before and after
for causal LMs.  The saved file records the folder, so ``evaluate`` rebuilds the
architecture from it."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Optional

from .args import calibration_config
from .output import CLIError, emit, log, progress_flag

__all__ = ["is_hf_folder", "run_compress", "run_evaluate", "text_fidelity", "paired_latency_batch"]

#: calibration sequences when --calib is not given, and their batch size
DEFAULT_SEQUENCES = 128
BATCH = 8
#: held-out sequences for fidelity / perplexity
TEST_SEQUENCES = 64


def is_hf_folder(spec: str) -> bool:
    """Whether ``spec`` names a local Hugging Face model folder (a config.json inside), or
    is "all-MiniLM-L6-v2" (the folder of the installed weights package)."""
    from ..models import hf

    return spec in (hf.MINILM, "minilm") or (Path(spec) / "config.json").is_file()


def _load(folder: str) -> tuple[Any, Any, bool]:
    """(model, tokenizer, causal) of a folder; loading problems become a CLIError."""
    from ..models import hf

    try:
        causal = hf.is_causal_lm(hf.model_folder(folder))
        return hf.load_hf(folder), hf.load_tokenizer(folder), causal
    except (OSError, ValueError, ImportError) as e:
        raise CLIError(f"{folder}: cannot load the model folder ({str(e).splitlines()[0]})") from None


def _batches(text: Optional[str], split: str, tokenizer: Any, seq_len: int, n: int) -> list[Any]:
    """Up to ``n`` sequences of ``text`` (a file) or of the built-in English text ``split``,
    in batches of :data:`BATCH`."""
    from ..models import hf

    if text is not None and not Path(text).is_file():
        raise CLIError(f"--text / --test-text {text}: no such file")
    source = Path(text) if text is not None else hf.english_text(split)
    try:
        return hf.text_batches(source, tokenizer, seq_len=seq_len, batch_size=BATCH,
                               max_batches=max(1, math.ceil(n / BATCH)))
    except ValueError as e:
        raise CLIError(f"{text or 'the built-in text'}: {e}") from None


def run_compress(args: argparse.Namespace) -> int:
    """compress FOLDER: calibrate on text, compress, score on held-out text, save."""
    from .. import io as _io
    from ..compress import compress

    if args.fine_tune or args.quantize is not None:
        raise CLIError("--fine-tune and --quantize are for the built-in image models, not Hugging Face folders")
    progress = progress_flag(args)
    model, tok, causal = _load(args.model)
    calib = _batches(args.text, "calibration", tok, args.seq_len, args.calib or DEFAULT_SEQUENCES)
    test = _batches(args.test_text, "test", tok, args.seq_len, TEST_SEQUENCES)
    log(args, f"model: {args.model} ({'causal LM' if causal else 'encoder'}); "
              f"{sum(len(b['input_ids']) for b in calib)} calibration sequences of <= {args.seq_len} tokens")
    target = _target(args, model, calib[0])
    t0 = time.perf_counter()
    try:
        new, report = compress(model, calib, target, allocation=args.allocation, rank=args.rank, density=args.density,
                               structure=args.structure, method=args.method, exclude=args.exclude or None,
                               keep_first_last=not args.all_layers, max_iter=args.max_iter, seed=args.seed,
                               progress=progress, calibration=calibration_config(args),
                               checkpoint_dir=args.checkpoint_dir)
    except ValueError as e:
        hint = "" if args.budget_scope == "layers" else " (fractions of the whole model; --budget-scope layers counts the compressed layers only)"
        raise CLIError(f"{str(e).splitlines()[0]}{hint}") from None
    seconds = time.perf_counter() - t0
    from ..models import hf as _hf

    result: dict[str, Any] = {"model": str(_hf.model_folder(args.model).resolve()), "kind": "causal_lm" if causal else "encoder",
                              "compress_seconds": seconds, **_scores(model, new, test, causal)}
    result.update(_sizes(model, new, calib[0]))
    if not args.no_latency:
        result.update(paired_latency_batch(model, new, calib[0]))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"hf_folder": result["model"], "hf_seq_len": args.seq_len, "report": report.to_dict(), "cli": result}
    _io.save(new, out, metadata=meta, dtype=args.dtype)
    result.update(file=str(out), file_bytes=out.stat().st_size, report=report.to_dict())
    emit(args, result, "\n".join([report.table(), "", *_lines(result), f"saved {out} ({result['file_bytes']:,d} bytes) "
                                  f"in {seconds:.1f} s of compression"]))
    return 0


def _target(args: argparse.Namespace, model: Any, example: Any) -> Any:
    """The Budget of the command line (None for explicit sizes); --latency is measured on
    the first calibration batch."""
    from ..budget import Budget

    latency = getattr(args, "latency", None)
    if args.params is None and args.macs is None and latency is None:
        return None
    lm = None
    if latency is not None:
        from ..budget.latency import LatencyModel

        lm = LatencyModel.of_model(model, example)
    return Budget(params=args.params, macs=args.macs, latency=latency, latency_model=lm, scope=args.budget_scope,
                  weighting=args.weighting)


def _scores(dense: Any, new: Any, test: list[Any], causal: bool) -> dict[str, Any]:
    """Held-out quality: perplexity before / after (causal LM) or embedding cosine."""
    if causal:
        from ..models.decoder import perplexity

        return {"perplexity_before": perplexity(dense, test), "perplexity_after": perplexity(new, test)}
    return {"cosine": text_fidelity(new, dense, test)}


def _sizes(dense: Any, new: Any, example: Any) -> dict[str, Any]:
    from ..nn import counts

    seq = int(example["input_ids"].shape[1])
    return {"before": {"params": int(counts.model_params(dense)), "macs": int(counts.model_macs(dense, (seq,)))},
            "after": {"params": int(counts.model_params(new)), "macs": int(counts.model_macs(new, (seq,)))},
            "macs_sequence": seq}


def _lines(result: dict[str, Any]) -> list[str]:
    b, a = result["before"], result["after"]
    out = [f"parameters  {b['params']:>12,d} -> {a['params']:>12,d}  ({a['params'] / b['params']:.1%})",
           f"MACs/seq    {b['macs']:>12,d} -> {a['macs']:>12,d}  ({a['macs'] / b['macs']:.1%}; "
           f"{result['macs_sequence']} tokens)"]
    if "perplexity_after" in result:
        out.append(f"perplexity  {result['perplexity_before']:.2f} -> {result['perplexity_after']:.2f} (held-out text)")
    if "cosine" in result:
        c = result["cosine"]
        out.append(f"embedding cosine to the original {c['mean']:.4f} (min {c['min']:.4f}, {c['sentences']} held-out "
                   "sentences, mean-pooled)")
    if "latency_ratio" in result:
        out.append(f"CPU latency {result['latency_ms_before']:.2f} ms -> {result['latency_ms_after']:.2f} ms "
                   f"({result['latency_ratio']:.2f}x dense [{result['latency_ratio_iqr'][0]:.2f}, "
                   f"{result['latency_ratio_iqr'][1]:.2f}], one calibration batch, {result['latency_runs']} paired rounds; "
                   f"{sum(f == 'pair' for f in result['execution'].values())} of {len(result['execution'])} "
                   "layers run as L + S, the others merged)")
    return out


def text_fidelity(model: Any, reference: Any, batches: list[Any]) -> dict[str, float]:
    """Cosine between the mean-pooled last hidden states of ``model`` and ``reference``,
    per sentence (padding excluded): {"mean", "min", "sentences"}."""
    import torch

    from ..models.hf import mean_pool

    cos = []
    with torch.inference_mode():
        for b in batches:
            a = mean_pool(reference(**b).last_hidden_state, b["attention_mask"])
            c = mean_pool(model(**b).last_hidden_state, b["attention_mask"])
            cos.append(torch.nn.functional.cosine_similarity(a, c, dim=1))
    allc = torch.cat(cos)
    return {"mean": float(allc.mean()), "min": float(allc.min()), "sentences": int(allc.numel())}


def paired_latency_batch(dense: Any, new: Any, batch: Any, runs: int = 20) -> dict[str, Any]:
    """Paired, interleaved forward time of two models on one dict batch, after the
    execution planner chose each compressed layer's form on it."""
    from ..nn.execution import plan_execution
    from . import measure

    forms = plan_execution(new, batch).forms()

    lat = measure.paired_calls(lambda: dense(**batch), lambda: new(**batch), runs=runs)
    return {"latency_ms_before": lat["ms_a"], "latency_ms_after": lat["ms_b"], "latency_ratio": lat["ratio"],
            "latency_ratio_iqr": [lat["ratio_q1"], lat["ratio_q3"]], "latency_runs": runs, "execution": forms}


def run_evaluate(args: argparse.Namespace, path: Path, meta: dict[str, Any]) -> int:
    """evaluate FILE of a Hugging Face model: rebuilt from the recorded folder, scored on
    held-out text against the original."""
    from .. import io as _io

    folder = meta["hf_folder"]
    if not is_hf_folder(folder):
        raise CLIError(f"{path} was compressed from {folder}, which is no longer a model folder")
    dense, tok, causal = _load(folder)
    new = _io.load(path, model=dense)
    test = _batches(getattr(args, "test_text", None), "test", tok, int(meta.get("hf_seq_len", 128)), TEST_SEQUENCES)
    result: dict[str, Any] = {"file": str(path), "file_bytes": path.stat().st_size, "model": folder,
                              **_scores(dense, new, test, causal), **_sizes(dense, new, test[0])}
    result.update(paired_latency_batch(dense, new, test[0]))
    emit(args, result, "\n".join([f"{path} ({result['file_bytes']:,d} bytes, from {folder})", *_lines(result)]))
    return 0
