"""Tests for lowrank_sparse.calibrate.batches: the forms calibration data comes in."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from lowrank_sparse.calibrate import calibrate, iter_batches


@pytest.mark.parametrize("form", ["tensor", "list", "tuples", "loader"])
def test_data_forms_give_the_same_statistics(form, tgen):
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(40, 6, generator=tgen)
    y = torch.arange(40)
    data = {
        "tensor": x,
        "list": list(x.split(8)),
        "tuples": list(zip(x.split(8), y.split(8))),
        "loader": DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False),
    }[form]
    st = calibrate(model, data, batch_size=8, seed=3).layers["0"]
    X = x.double()
    torch.testing.assert_close(st.gram, X.T @ X / 40, rtol=1e-12, atol=1e-12)
    ref = calibrate(model, x, batch_size=8, seed=3).layers["0"]
    assert torch.equal(st.sample, ref.sample)


def test_iter_batches_splits_tensors_and_reads_dict_batches(tgen):
    x = torch.randn(10, 3, generator=tgen)
    assert [b.shape[0] for b in iter_batches(x, 4)] == [4, 4, 2]
    got = list(iter_batches([{"image": x[:5], "label": 1}, {"x": x[5:]}]))
    assert torch.equal(got[0], x[:5]) and torch.equal(got[1], x[5:])
    with pytest.raises(TypeError, match="batch 0: expected a tensor input, got dict"):
        list(iter_batches([{"label": 1}]))
    with pytest.raises(ValueError, match="0-d tensor"):
        list(iter_batches(torch.tensor(1.0)))
