#!/usr/bin/env python
"""Which layer group decides the end-to-end score? Swap one group between two compressed models.

Compresses all-MiniLM-L6-v2 (real weights) with two methods at the same budget, exactly
as ``reproduce/hf_peers.py`` does (same calibration batches, ``Budget(params=f,
scope="layers")``), prints each model's per-layer sizes and errors, then for every layer
group of a BERT block (query, key, value, attention output, FFN up, FFN down) scores
(a) model A with that group taken from model B and (b) model B with it taken from A:
the mean-pooled embedding cosine to the dense model on the 64 held-out sentences.  It
also prints each layer's end-to-end sensitivity (:mod:`lowrank_sparse.budget.sensitivity`).

    nice python reproduce/hf_swap.py --structure 2:4 --fraction 0.6 --methods sparsegpt lowrank_sparse
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_peers as H  # noqa: E402

import lowrank_sparse as lrs  # noqa: E402
from lowrank_sparse.budget.sensitivity import layer_sensitivities  # noqa: E402

GROUPS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "intermediate.dense", "output.dense")


def in_group(name: str, group: str) -> bool:
    """``name`` is a layer of ``group`` (the FFN down-projection "output.dense" is not the
    attention output "attention.output.dense")."""
    return name.endswith(group) and not (group == "output.dense" and "attention" in name)


def swapped(base: Any, donor: Any, group: str) -> Any:
    """A copy of ``base`` with every layer of ``group`` replaced by ``donor``'s."""
    out = copy.deepcopy(base)
    for name, mod in donor.named_modules():
        if "." in name and in_group(name, group):
            parent, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(parent), leaf, copy.deepcopy(mod))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--structure", default="2:4")
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--methods", nargs=2, default=["sparsegpt", "lowrank_sparse"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    _, folder = H._models()[0]
    dense, calib, test, causal = H._data(folder)
    names = [n for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear) and "encoder.layer" in n]
    sens = layer_sensitivities(dense, calib, names)
    models = {}
    for m in args.methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models[m], rep = lrs.compress(dense, calib, lrs.Budget(params=args.fraction, scope="layers"), method=m,
                                          structure=args.structure, progress=False)
        print(f"{m}: cosine {H._score(models[m], dense, test, causal)['cosine']['mean']:.4f}", flush=True)
        for r in rep.to_dict()["layers"]:
            print(f"   {r['name']:45s} rank {r['rank']:4d} density {r['density']:.3f} "
                  f"error {r['output_error_after']:.4f} sensitivity {sens.get(r['name'], float('nan')):.3f}")
    a, b = args.methods
    for g in GROUPS:
        ab = H._score(swapped(models[a], models[b], g), dense, test, causal)["cosine"]["mean"]
        ba = H._score(swapped(models[b], models[a], g), dense, test, causal)["cosine"]["mean"]
        print(f"{g:24s} {a} with it from {b}: {ab:.4f} | {b} with it from {a}: {ba:.4f}", flush=True)


if __name__ == "__main__":
    main()
