"""Tests for lowrank_sparse.compress.plan: explicit per-layer sizes (ints, fractions,
pattern dicts), hand-computed."""

from __future__ import annotations

import pytest

from lowrank_sparse.calibrate import LayerStats
from lowrank_sparse.compress.plan import LayerSize, check_plan, explicit_plan

STATS = {"fc1": LayerStats("fc1", "linear", (40, 10)), "fc2": LayerStats("fc2", "linear", (8, 40)),
         "conv": LayerStats("conv", "conv", (16, 27), block=9)}
NAMES = list(STATS)


@pytest.mark.parametrize(
    "rank,density,expected",
    [
        (4, None, {"fc1": (4, 0.0), "fc2": (4, 0.0), "conv": (4, 0.0)}),
        (0.5, 0.1, {"fc1": (5, 0.1), "fc2": (4, 0.1), "conv": (8, 0.1)}),
        (100, None, {"fc1": (10, 0.0), "fc2": (8, 0.0), "conv": (16, 0.0)}),  # capped at full rank
        ({"fc*": 2, "*": 0.25}, None, {"fc1": (2, 0.0), "fc2": (2, 0.0), "conv": (4, 0.0)}),
        ({"fc1": 3}, {"conv": 0.2}, {"fc1": (3, 0.0), "fc2": (8, 0.0), "conv": (0, 0.2)}),  # fc2: untouched
    ],
    ids=["int", "fraction", "capped", "first-pattern-wins", "unmatched-untouched"],
)
def test_explicit_sizes(rank, density, expected):
    plan = explicit_plan(NAMES, STATS, rank, density)
    assert {k: (v.rank, v.density) for k, v in plan.items()} == expected
    assert all(v.slices == 1 for v in plan.values())


@pytest.mark.parametrize(
    "rank,density,err,match",
    [
        (1.5, None, ValueError, r"layer 'fc1'.*\[0, 1\]"),
        (-1, None, ValueError, "rank must be >= 0"),
        ("4", None, TypeError, "rank must be an int"),
        (None, 2.0, ValueError, "density must be in"),
        ({3: 1}, None, TypeError, "name patterns"),
    ],
    ids=["fraction>1", "negative", "str", "density>1", "non-str-key"],
)
def test_bad_explicit_sizes(rank, density, err, match):
    with pytest.raises(err, match=match):
        explicit_plan(NAMES, STATS, rank, density)


def test_check_plan_rejects_deleting_a_layer():
    check_plan({"a": LayerSize(1, 0.0), "b": LayerSize(0, 0.1)})
    with pytest.raises(ValueError, match="layer 'b': rank 0 and density 0"):
        check_plan({"a": LayerSize(1, 0.0), "b": LayerSize(0, 0.0)})
