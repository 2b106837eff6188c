"""Tests for lowrank_sparse.calibrate.run: calibrate() as a whole (model untouched, hooks
removed, input validation, error messages, the config object)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from lowrank_sparse.calibrate import CalibrationConfig, calibrate, iter_batches


def test_model_is_not_modified(tgen):
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    before = copy.deepcopy(model.state_dict())
    calibrate(model, torch.randn(10, 5, generator=tgen))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_wrong_shape_names_the_first_failing_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(ValueError, match=r"layer '0'.*\(5, 3, 8, 8\)"):
        calibrate(model, torch.randn(5, 3, 8, 8))
    with pytest.raises(ValueError, match=r"layer '3'.*\(5, 98\)"):
        calibrate(model, torch.randn(5, 1, 9, 9))
    # hooks were removed even though the forward failed
    assert not model[0]._forward_hooks and not model[3]._forward_pre_hooks


@pytest.mark.parametrize(
    "data",
    [torch.empty(0, 4), [], DataLoader(TensorDataset(torch.empty(0, 4)), batch_size=4)],
    ids=["empty-tensor", "empty-list", "empty-loader"],
)
def test_empty_data_raises(data):
    with pytest.raises(ValueError, match="empty"):
        calibrate(nn.Sequential(nn.Linear(4, 2)), data)


def test_no_compressible_layer_raises():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 3, groups=3))
    with pytest.raises(ValueError, match="no compressible layer.*groups=3"):
        calibrate(model, torch.randn(2, 3, 5, 5))


def test_nan_input_names_the_layer():
    with pytest.raises(ValueError, match=r"layer '0'.*NaN"):
        calibrate(nn.Sequential(nn.Linear(3, 2)), torch.tensor([[1.0, float("nan"), 0.0]]))
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(3e38)  # overflows to inf inside the first layer
    with pytest.raises(ValueError, match=r"layer '1'.*(Inf|NaN)"):
        calibrate(model, torch.ones(2, 3))


def test_bad_arguments():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="layer 'nope'"):
        calibrate(model, torch.randn(2, 3), layers=["nope"])
    with pytest.raises(TypeError, match="calibration data"):
        calibrate(model, 3.0)
    with pytest.raises(TypeError, match="batch 0"):
        list(iter_batches([("not a tensor", 1)]))
    with pytest.raises(ValueError, match="sample_size"):
        calibrate(model, torch.randn(2, 3), sample_size=-1)


# ---------------------------------------------------------------------- the config


def test_config_and_keywords_give_the_same_statistics(tgen):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(60, 5, generator=tgen)
    by_kw = calibrate(model, x, sample_size=16, batch_size=7, seed=4).layers["0"]
    cfg = CalibrationConfig(sample_size=16, batch_size=7, seed=4)
    by_cfg = calibrate(model, x, config=cfg).layers["0"]
    assert torch.equal(by_kw.sample, by_cfg.sample) and torch.equal(by_kw.gram, by_cfg.gram)
    # a keyword overrides the config's field
    other = calibrate(model, x, config=cfg, seed=5).layers["0"]
    assert not torch.equal(other.sample, by_cfg.sample)
    assert calibrate(model, x, config=CalibrationConfig(max_batches=2), batch_size=10).samples == 20


def test_config_validation():
    for kw, what in ((dict(sample_size=-1), "sample_size"), (dict(batch_size=0), "batch_size"),
                     (dict(chunk_rows=0), "chunk_rows")):
        with pytest.raises(ValueError, match=what):
            CalibrationConfig(**kw)
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="CalibrationConfig"):
        calibrate(model, torch.randn(2, 3), config={"seed": 1})
