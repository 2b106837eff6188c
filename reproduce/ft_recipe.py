"""Which fine-tuning recipe suits the compressed networks: distillation at several learning
rates and weight decays against plain cross-entropy, chosen on validation images only.

For each budget and method, the sweep's saved compressed VGG-16 of seed 0 (run
``reproduce/sweep.py --seed 0`` for those budgets and methods first) is fine-tuned for
one epoch on the sweep's fine-tuning subset (5,000 training images, ``data.load``'s
seeded subset) and scored on 5,000 *other* training images (the validation set; the test
split is not looked at).  Writes ``docs/results/ft_recipe.json`` and prints a table.

Usage::

    nice python reproduce/ft_recipe.py [--budgets p20 f25]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = [("distill", 0.001, 5e-4), ("distill", 0.003, 5e-4), ("distill", 0.01, 5e-4), ("distill", 0.03, 5e-4),
           ("distill", 0.01, 0.0), ("ce", 0.01, 0.0), ("ce", 0.003, 0.0)]
METHODS = ("lowrank_sparse", "sparse_only")


def validation(n_ft: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n_val training images outside the fine-tuning subset of ``data.load(subset=n_ft, seed)``."""
    from lowrank_sparse import data as D

    full = D.load("fashion_mnist", "train")
    used = set(D.subset_indices(len(full), n_ft, seed).tolist())
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed + 123)).tolist()
    idx = [i for i in order if i not in used][:n_val]
    return torch.stack([full[i][0] for i in idx]), torch.tensor([int(full[i][1]) for i in idx])


def main(argv: list[str] | None = None) -> int:
    from lowrank_sparse import data as D
    from lowrank_sparse import io as lio
    from lowrank_sparse import train as T
    from lowrank_sparse.distill import distill

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", nargs="+", default=["p20", "f25"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "ft_recipe.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    saved = D.cache_dir() / "reproduce"
    teacher = T.get_trained("vgg16", "fashion_mnist", "cpu", args.seed, progress=False).eval()
    ft = D.load("fashion_mnist", "train", subset=5000, seed=args.seed)
    val = validation(5000, 5000, args.seed)
    rows = []
    for budget in args.budgets:
        for method in METHODS:
            path = saved / f"vgg16-fashion_mnist-cpu-s{args.seed}-{budget}-{method}-alds-standard-compressed.safetensors"
            base = lio.load(path).eval()
            before = T.evaluate(base, val)
            for recipe, lr, wd in RECIPES:
                model, t0 = copy.deepcopy(base), time.perf_counter()
                if recipe == "distill":
                    distill(model, teacher, ft, epochs=1, lr=lr, weight_decay=wd, seed=args.seed, progress=False)
                else:
                    T.fine_tune(model, ft, epochs=1, lr=lr, seed=args.seed, progress=False)
                rows.append({"budget": budget, "method": method, "recipe": recipe, "lr": lr, "weight_decay": wd,
                             "val_before": before, "val_after": T.evaluate(model, val),
                             "seconds": time.perf_counter() - t0})
                print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"command": "python reproduce/ft_recipe.py", "seed": args.seed,
                                    "teacher_val": T.evaluate(teacher, val), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
