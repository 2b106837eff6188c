#!/usr/bin/env python
"""One-shot compression of real transformers by this library and by its peers, at the
same parameter accounting: all-MiniLM-L6-v2 (real weights) and, when they are cached,
the small decoders trained by ``lowrank_sparse.models.decoder`` (GPT-2, and the
Llama-style one with a gated SiLU MLP).

Every method runs through the same ``lowrank_sparse.compress`` call on the same
calibration batches (16 batches of 8 paragraphs of the built-in English text, calibration
part, <= 128 tokens, padding masked; the decoder uses the calibration part of its own corpus), with ``Budget(params=f, scope="layers")``: f of the
weights of the selected linear layers (every encoder / decoder linear but the first,
which compress keeps dense; embeddings, norms and a tied head are neither counted nor
charged), the rank / density per layer chosen by the ALDS allocator for each method:

* ``lowrank_sparse``: this library's activation-aware L + S (default settings);
* ``oats``: OATS (alternating thresholding on the input-norm-scaled weight);
* ``wanda``: Wanda (|W| ||x||, per row);
* ``sparsegpt``: SparseGPT (column-wise OBS updates);
* ``svd_llm``: SVD-LLM (truncation of the whitened weight);
* ``lowrank_sparse:sequential``: L + S with sequential calibration (each layer fitted
  to the inputs the already-compressed layers before it produce);
* ``lowrank_sparse:corrected``: L + S with sequential calibration and error-corrected
  targets (each layer fitted to the dense model's output on the compressed model's
  input, ``CalibrationConfig(sequential=True, error_correction=True)``);
* ``lowrank_sparse:sensitivity``: L + S with ``Budget(weighting="sensitivity")``: the
  allocator weighs each layer's error by how much of it reaches the model's output
  (measured with seeded noise on each layer's output);
* ``lowrank_sparse:enc-sensitivity``: the same weighting with the ENC allocator
  (``allocation="enc"``: the largest product of the layers' kept (1 - e^2), i.e. about the
  smallest sum of squared weighted errors, where ALDS equalises the largest weighted
  error);
* ``lowrank_sparse:linear-gate`` (gated-MLP models only): L + S with the gate / up
  projections fitted as linear on their input Gram instead of on their error in the
  gated product (``CalibrationConfig(gated_mlp="linear")``), to measure that objective.

Scores on the test part of the text (disjoint paragraphs, 64 sequences): the
mean-pooled embedding cosine to the dense model per sentence (MiniLM), perplexity
(the decoder); and the compression wall time (2 threads; the machine's load is recorded).

    nice python reproduce/hf_peers.py                      # -> docs/results/hf_peers.{json,md}
    python reproduce/hf_peers.py --render                  # re-render the .md from the .json
    python reproduce/hf_peers.py --methods wanda --fractions 0.5   # one cell (appended; done cells skipped)
    python reproduce/hf_peers.py --methods wanda --fractions 0.5 --redo   # rerun it (the saved row replaced)
    python reproduce/hf_peers.py --structure 2:4 --fractions 0.6    # 2:4 S (+ low rank where the method has it)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import lowrank_sparse as lrs
from lowrank_sparse.cli.hf import text_fidelity
from lowrank_sparse.models.decoder import perplexity
from lowrank_sparse.models import hf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "hf_peers"
METHODS = ("lowrank_sparse", "lowrank_sparse:sequential", "lowrank_sparse:corrected", "lowrank_sparse:sensitivity",
           "lowrank_sparse:enc-sensitivity", "lowrank_sparse:linear-gate",
           "oats", "wanda", "sparsegpt", "svd_llm")
#: method label -> (compress method, CalibrationConfig fields, only for gated-MLP models)
VARIANTS = {"lowrank_sparse:linear-gate": ("lowrank_sparse", {"gated_mlp": "linear"}, True),
            "lowrank_sparse:sequential": ("lowrank_sparse", {"sequential": True}, False),
            "lowrank_sparse:corrected": ("lowrank_sparse", {"sequential": True, "error_correction": True}, False),
            "lowrank_sparse:sensitivity": ("lowrank_sparse", {}, False),
            "lowrank_sparse:enc-sensitivity": ("lowrank_sparse", {}, False)}
#: method label -> Budget fields beyond params / scope
BUDGET_FIELDS = {"lowrank_sparse:sensitivity": {"weighting": "sensitivity"},
                 "lowrank_sparse:enc-sensitivity": {"weighting": "sensitivity"}}
#: method label -> allocator (default "alds")
ALLOCATIONS = {"lowrank_sparse:enc-sensitivity": "enc"}
#: methods with a sparse part (the ones a --structure applies to)
SPARSE = tuple(m for m in METHODS if m != "svd_llm")
FRACTIONS = (0.5, 0.3)


def _models() -> list[tuple[str, Path]]:
    out = [("all-MiniLM-L6-v2", hf.minilm_folder())]
    try:
        from lowrank_sparse.models import decoder

        cached = decoder.decoder_folder()
        folder = cached if (cached / "config.json").is_file() else None
    except (ImportError, AttributeError):
        folder = None
    if folder is not None:
        out.append(("decoder (GPT-2, trained here)", Path(folder)))
        llama = decoder.decoder_folder("cpu-llama")
        if (llama / "config.json").is_file():
            out.append(("decoder (Llama-style, gated MLP, trained here)", llama))
    return out


def _applies(method: str, dense: Any) -> bool:
    from lowrank_sparse.calibrate.gated import gated_blocks

    return method not in VARIANTS or not VARIANTS[method][2] or bool(gated_blocks(dense))


def _data(folder: Path) -> tuple[Any, list[Any], list[Any], bool]:
    model, tok = hf.load_hf(folder), hf.load_tokenizer(folder)
    causal = hf.is_causal_lm(folder)
    if causal:  # the decoder trained here: calibrate and score on its own corpus's held-out parts
        from lowrank_sparse.models.decoder import decoder_text as text
    else:
        text = hf.english_text
    calib = hf.text_batches(text("calibration"), tok, seq_len=128, batch_size=8, max_batches=16)
    test = hf.text_batches(text("test"), tok, seq_len=128, batch_size=8, max_batches=8)
    return model, calib, test, causal


def _score(model: Any, dense: Any, test: list[Any], causal: bool) -> dict[str, Any]:
    if causal:
        return {"perplexity": perplexity(model, test)}
    return {"cosine": text_fidelity(model, dense, test)}


def run_cell(name: str, dense: Any, calib: list[Any], test: list[Any], causal: bool, method: str,
             fraction: float, structure: str = "unstructured") -> dict[str, Any]:
    real, cal_fields, _ = VARIANTS.get(method, (method, {}, False))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new, report = lrs.compress(dense, calib, lrs.Budget(params=fraction, scope="layers", **BUDGET_FIELDS.get(method, {})),
                                   method=real, allocation=ALLOCATIONS.get(method, "alds"),
                                   structure=structure, progress=False,
                                   calibration=lrs.CalibrationConfig(**cal_fields))
    seconds = time.perf_counter() - t0
    layers = report.to_dict()["layers"]  # params include the biases: a little above the weight-only budget
    ratio = sum(r["params_after"] for r in layers) / sum(r["params_before"] for r in layers)
    errors = [r["output_error_after"] for r in layers if r["output_error_after"] is not None]
    return {"model": name, "method": method, "fraction": fraction, "structure": structure,
            "compress_seconds": seconds,
            "layers_params_ratio": ratio, "mean_layer_output_error": sum(errors) / max(len(errors), 1),
            **_score(new, dense, test, causal),
            "load": os.getloadavg()[0]}


PREAMBLE = """# Transformers, one-shot: this library against its peers

Commands: `nice python reproduce/hf_peers.py --fractions 0.5` (and `--fractions 0.3`),
`nice python reproduce/hf_peers.py --structure 2:4 --fractions 0.6` (2:4 S plus low rank
where the method has a low-rank part), `--models Llama` / `--models MiniLM` for one model
(2 threads; the machine's 1-minute load average is in the last column: other jobs shared
the 2 cores). Every method runs through the same `lowrank_sparse.compress` call on the
same calibration batches with `Budget(params=f, scope="layers")`: the fraction f of the
weights of the selected linear layers (every linear but the first and the last), each
method's per-layer sizes chosen by the ALDS allocator (ENC for `enc-sensitivity`). Held-out score: mean-pooled
embedding cosine to the dense model over 64 test sentences (MiniLM, real weights),
perplexity over the test part of its own corpus (the small GPT-2 and Llama-style
decoders trained here by `lowrank_sparse.models.decoder`). *Mean layer error*: the mean
over layers of the relative output error (after the layer's activation) on the
calibration inputs, each layer fitted to the dense model's inputs. *Kept*: the stored
values of the compressed layers over their dense weights (biases included).
"""


#: the hand-written analysis below the table starts with this line; render keeps it
DISCUSSION = "What the numbers say:"


def _discussion(md: Path) -> str:
    """The analysis part of an existing ``md`` (from :data:`DISCUSSION` on), or ""."""
    text = md.read_text() if md.exists() else ""
    return text[text.index(DISCUSSION):] if DISCUSSION in text else ""


def _structure(row: dict[str, Any]) -> str:
    return row.get("structure", "unstructured")


def render(rows: list[dict[str, Any]], dense: dict[str, Any], discussion: str = "") -> str:
    out = [PREAMBLE,
           "| model | budget / kept (of the layers) | S structure | method | held-out score | mean layer error (calib.) | compress s | load |",
           "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["model"], _structure(r) != "unstructured", -r["fraction"],
                                         METHODS.index(r["method"]))):
        score = (f"perplexity {r['perplexity']:.2f} (dense {dense[r['model']]['perplexity']:.2f})" if "perplexity" in r
                 else f"cosine {r['cosine']['mean']:.4f} (min {r['cosine']['min']:.3f})")
        out.append(f"| {r['model']} | {r['fraction']:.0%} / {r['layers_params_ratio']:.1%} | {_structure(r)} | {r['method']} | {score} | "
                   f"{r['mean_layer_output_error']:.4f} | {r['compress_seconds']:.0f} | "
                   f"{r['load']:.1f} |")
    return "\n".join(out) + "\n" + ("\n" + discussion if discussion else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--structure", default="unstructured", help="S structure, e.g. 2:4 (methods without S skipped)")
    ap.add_argument("--models", nargs="+", default=None, help="model names to run (default: all available)")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--redo", action="store_true", help="rerun the selected cells that are already saved (replaced)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.out + ".json")
    saved = json.loads(path.read_text()) if path.exists() else {"rows": [], "dense": {}}
    if not args.render:
        for name, folder in _models():
            if args.models is not None and not any(k in name for k in args.models):
                continue
            dense, calib, test, causal = _data(folder)
            saved["dense"][name] = {"perplexity": perplexity(dense, test)} if causal else {}
            for f in args.fractions:
                for m in args.methods:
                    if args.structure != "unstructured" and m not in SPARSE:
                        continue
                    same = lambda r, name=name, m=m, f=f: (  # noqa: E731
                        r["model"] == name and r["method"] == m and r["fraction"] == f
                        and _structure(r) == args.structure)
                    if not _applies(m, dense) or (not args.redo and any(same(r) for r in saved["rows"])):
                        continue
                    row = run_cell(name, dense, calib, test, causal, m, f, args.structure)
                    print(json.dumps(row), flush=True, file=sys.stderr)
                    saved["rows"] = [r for r in saved["rows"] if not same(r)] + [row]
                    path.write_text(json.dumps(saved, indent=1) + "\n")
    md = Path(args.out + ".md")
    text = render(saved["rows"], saved["dense"], _discussion(md))
    md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
