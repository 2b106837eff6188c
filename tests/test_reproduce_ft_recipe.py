"""reproduce/ft_recipe.py: its validation images are training images outside the
fine-tuning subset that data.load draws (checked on the images themselves)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reproduce_ft_recipe", REPO / "reproduce" / "ft_recipe.py")
ft_recipe = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ft_recipe
_spec.loader.exec_module(ft_recipe)


@pytest.mark.parametrize("seed", [0, 3], ids=["seed0", "seed3"])
def test_validation_is_disjoint_from_the_fine_tuning_subset(seed):
    from lowrank_sparse import data as D

    xv, yv = ft_recipe.validation(2000, 500, seed)
    ft = D.load("fashion_mnist", "train", subset=2000, seed=seed)
    full = D.load("fashion_mnist", "train")

    def key(x):
        return hashlib.sha1(x.numpy().tobytes()).hexdigest()

    ft_keys = {key(ft[i][0]) for i in range(len(ft))}
    full_keys = {key(full[i][0]) for i in range(len(full))}
    val_keys = [key(x) for x in xv]
    assert len(val_keys) == 500 and len(yv) == 500
    assert all(k in full_keys for k in val_keys), "validation images come from the training split"
    assert not ft_keys.intersection(val_keys), "no validation image is in the fine-tuning subset"
