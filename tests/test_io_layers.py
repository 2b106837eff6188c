"""io/layers.py: the pair modules' configs on save and their rebuilding on load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from io_fixtures import Net, compressed  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse.io.layers import PAIRS, pair_configs, rebuild_pairs
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear


def test_pair_configs_name_every_pair(tgen: torch.Generator) -> None:
    net = compressed(tgen)
    cfgs = pair_configs(net)
    assert set(cfgs) == {"features.3", "fc"}
    assert cfgs["fc"] == net.fc.config() and cfgs["features.3"]["class"] == "LowRankSparseConv2d"
    assert set(PAIRS) == {"LowRankSparseLinear", "LowRankSparseConv2d"}


def test_rebuild_pairs_swaps_modules_in(tgen: torch.Generator) -> None:
    net = compressed(tgen)
    tensors = dict(net.state_dict())
    skel = rebuild_pairs(Path("f"), Net(), pair_configs(net), tensors)
    assert isinstance(skel.fc, LowRankSparseLinear) and isinstance(skel.features[3], LowRankSparseConv2d)
    assert torch.equal(skel.fc.to_dense_weight(), net.fc.to_dense_weight())
    whole = rebuild_pairs(Path("f"), nn.Identity(), {"": net.fc.config()},
                          {k[3:]: v for k, v in tensors.items() if k.startswith("fc.")})
    assert isinstance(whole, LowRankSparseLinear)


def test_rebuild_pairs_errors(tgen: torch.Generator) -> None:
    net = compressed(tgen)
    tensors = dict(net.state_dict())
    with pytest.raises(ValueError, match=r"f: unknown layer class 'Dense' for 'fc'"):
        rebuild_pairs(Path("f"), Net(), {"fc": {"class": "Dense"}}, tensors)
    bad = {**net.fc.config(), "out_features": 11}
    with pytest.raises(ValueError, match=r"f: cannot rebuild layer 'fc'"):
        rebuild_pairs(Path("f"), Net(), {"fc": bad}, tensors)
    with pytest.raises(ValueError, match=r"f: the model has no layer 'head\.fc'"):
        rebuild_pairs(Path("f"), Net(), {"head.fc": net.fc.config()},
                      {"head." + k: v for k, v in tensors.items() if k.startswith("fc.")})
