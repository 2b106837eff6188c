"""reproduce/seeds.py: statistics over seeds and the win rule, on hand-made rows."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reproduce_seeds", REPO / "reproduce" / "seeds.py")
seeds = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = seeds
_spec.loader.exec_module(seeds)


def row(method: str, seed: int, acc_ft: float | None, acc_after: float = 0.5, **kw) -> dict:
    base = {"model": "vgg16", "dataset": "fashion_mnist", "schedule": "cpu", "budget": "p33",
            "allocation": "alds", "structure": "unstructured", "ft_recipe": "distill", "method": method,
            "seed": seed, "acc_after": acc_after, "acc_ft": acc_ft, "status": "ok"}
    return {**base, **kw}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8))
def test_mean_std_is_the_sample_statistics(values):
    m, s = seeds.mean_std(values)
    assert m == pytest.approx(statistics.mean(values), abs=1e-12)
    assert s == pytest.approx(statistics.stdev(values), abs=1e-9)


def test_mean_std_of_one_value_and_of_none():
    m, s = seeds.mean_std([0.7])
    assert m == 0.7 and math.isnan(s)
    with pytest.raises(ValueError, match="no values"):
        seeds.mean_std([])


@pytest.mark.parametrize(
    "a, b, expected",
    [((0.90, 0.01, 3), (0.85, 0.01, 3), "win"),
     ((0.85, 0.01, 3), (0.90, 0.01, 3), "loss"),
     ((0.90, 0.03, 3), (0.86, 0.02, 3), "tie"),      # 0.04 apart, spreads 0.05
     ((0.90, 0.0, 3), (0.90, 0.0, 3), "tie"),
     ((0.90, math.nan, 1), (0.80, 0.01, 3), "-"),    # one seed: not callable
     (None, (0.80, 0.01, 3), "-")],
    ids=["win", "loss", "within-spread", "equal", "single-seed", "missing"],
)
def test_verdict(a, b, expected):
    assert seeds.verdict(a, b) == expected


def test_summary_groups_by_cell_and_keeps_the_last_row_of_a_seed():
    rows = [row("lowrank_sparse", 0, 0.80), row("lowrank_sparse", 0, 0.90),  # re-run: last one counts
            row("lowrank_sparse", 1, 0.92), row("sparse_only", 0, 0.70), row("sparse_only", 1, 0.72),
            row("sparse_only", 2, 0.5, status="failed"),
            row("lowrank_sparse", 0, 0.60, ft_recipe="ce"),
            row("dense", 0, None, acc_before=0.93, ft_recipe="ce")]
    s = seeds.summarise(rows)
    cell = ("vgg16", "fashion_mnist", "cpu", "p33", "alds", "unstructured", "distill")
    ls, sp = s[cell]["lowrank_sparse"], s[cell]["sparse_only"]
    assert ls["seeds"] == [0, 1] and sp["seeds"] == [0, 1]
    assert ls["acc_ft"] == pytest.approx((0.91, statistics.stdev([0.90, 0.92]), 2))
    assert seeds.verdict(ls["acc_ft"], sp["acc_ft"]) == "win"
    assert s[cell[:-1] + ("ce",)]["lowrank_sparse"]["seeds"] == [0]
    assert all(m != "dense" for c in s.values() for m in c)
    assert seeds.dense_accuracy(rows)[("vgg16", "fashion_mnist", "cpu")][0] == 0.93


def test_rows_without_new_fields_get_their_defaults():
    r = row("lowrank_sparse", 0, 0.9)
    del r["structure"], r["ft_recipe"]
    assert seeds.cell_of(r)[-2:] == ("unstructured", "ce")


def test_render_calls_each_cell():
    rows = [row("lowrank_sparse", s, 0.90 + 0.001 * s) for s in range(3)]
    rows += [row("sparse_only", s, 0.80 + 0.001 * s) for s in range(3)]
    text = seeds.render(rows)
    line = next(l for l in text.splitlines() if "| lowrank_sparse |" in l)
    assert line.endswith("| tie | beats sparse-only | +10.00 ± 0.00 (n=3) |") and "0,1,2" in line
    assert "90.10 ± 0.10 (n=3)" in line
    ref = next(l for l in text.splitlines() if "| sparse_only |" in l)
    assert ref.endswith("| - | - | - |") and "80.10 ± 0.10 (n=3)" in ref


def test_paired_difference_is_per_seed():
    """Seed-to-seed spread shared by both methods cancels in the paired difference."""
    base = [0.80, 0.86, 0.90]
    diffs = [0.010, 0.012, 0.011]
    rows = [row("lowrank_sparse", s, b + d) for s, (b, d) in enumerate(zip(base, diffs, strict=True))]
    rows += [row("sparse_only", s, b) for s, b in enumerate(base)] + [row("sparse_only", 3, 0.5)]
    cell = seeds.cell_of(rows[0])
    m, sd, n = seeds.paired_difference(rows, cell, "lowrank_sparse", "acc_ft")
    assert (m, sd, n) == pytest.approx((statistics.mean(diffs), statistics.stdev(diffs), 3))
    s = seeds.summarise(rows)[cell]
    assert seeds.verdict(s["lowrank_sparse"]["acc_ft"], s["sparse_only"]["acc_ft"]) == "tie"
    assert seeds.paired_difference(rows, cell, "rank_only", "acc_ft") is None


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sweep results"):
        seeds.main(["--jsonl", str(tmp_path / "none.jsonl")])
