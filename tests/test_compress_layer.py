"""Tests for lowrank_sparse.compress.layer: one layer solved, swapped in and reported."""

from __future__ import annotations

import torch
import torch.nn as nn

from lowrank_sparse.calibrate import calibrate
from lowrank_sparse.compress import LowRankSparseConfig
from lowrank_sparse.compress.layer import LayerJob, compress_layer
from lowrank_sparse.compress.plan import LayerSize
from lowrank_sparse.nn import LowRankSparseLinear
from lowrank_sparse.solve.config import SolverConfig
from lowrank_sparse.structure import parse_structure


def _job(model: nn.Module, samples: int) -> LayerJob:
    cfg = LowRankSparseConfig(solver=SolverConfig(max_iter=20))
    return LayerJob(model, cfg, parse_structure("unstructured"), None, {}, samples)


def test_compressed_layer_is_swapped_in_and_counted(tgen):
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(30, 10, generator=tgen)
    st = calibrate(model, x).layers["0"]
    orig = model[0]
    rep = compress_layer(_job(model, 30), "0", orig, st, LayerSize(2, 0.1))
    assert isinstance(model[0], LowRankSparseLinear) and model[0].rank == 2
    nnz = int(model[0].sparse.nnz)
    assert rep.status == "compressed" and rep.rank == 2 and rep.density == nnz / 80
    assert rep.params_before == 8 * 10 + 8
    assert rep.params_after == 2 * (8 + 10) + nnz + 8  # factors + nonzeros + bias
    assert rep.macs_before == 80 and rep.macs_after == 2 * (8 + 10) + nnz


def test_full_rank_keeps_the_original_module(tgen):
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    st = calibrate(model, torch.randn(20, 6, generator=tgen)).layers["0"]
    orig = model[0]
    rep = compress_layer(_job(model, 20), "0", orig, st, LayerSize(4, 0.0))
    assert model[0] is orig
    assert rep.status == "untouched" and rep.params_after == rep.params_before
    assert "original layer kept" in rep.note
