"""io/loading.py: bitwise round trips, whole-module files, the skeleton."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from io_fixtures import Net, compressed  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse.io import load, read_metadata, save
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from sparse_fixtures import random_decomposition


@pytest.mark.parametrize("kinds", [("channel", "unstructured"), ("row", "2:4"), ("unstructured", "row")], ids="-".join)
def test_round_trip_bitwise_with_skeleton(kinds: tuple[str, str], tmp_path: Path, tgen: torch.Generator) -> None:
    net = compressed(tgen, *kinds)
    f = tmp_path / "m.safetensors"
    save(net, f, metadata={"note": "x"})
    net2 = load(f, model=Net())
    x = torch.randn(4, 3, 8, 8, generator=tgen)
    with torch.no_grad():
        assert torch.equal(net(x), net2(x))
    assert isinstance(net2.fc, LowRankSparseLinear) and isinstance(net2.features[3], LowRankSparseConv2d)
    sd, sd2 = net.state_dict(), net2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert read_metadata(f)["user"] == {"note": "x"}


def test_whole_module_and_arch_recorded(tmp_path: Path, tgen: torch.Generator) -> None:
    mod = LowRankSparseConv2d.from_conv(nn.Conv2d(4, 6, 3), random_decomposition(6, 36, 2, "row", tgen))
    f = tmp_path / "c.safetensors"
    save(mod, f, metadata={"arch": {"name": "vgg16", "kwargs": {"num_classes": 10}}})
    meta = read_metadata(f)
    assert meta["arch"] == {"name": "vgg16", "kwargs": {"num_classes": 10}} and meta["schema_version"] == 3
    assert meta["layers"][""]["class"] == "LowRankSparseConv2d"
    back = load(f, model=nn.Conv2d(4, 6, 3))
    x = torch.randn(1, 4, 5, 5, generator=tgen)
    assert torch.equal(back(x), mod(x))


def test_no_arch_needs_model(tmp_path: Path, tgen: torch.Generator) -> None:
    f = tmp_path / "m.safetensors"
    save(compressed(tgen), f)
    with pytest.raises(ValueError, match="model="):
        load(f)


def test_skeleton_without_the_recorded_layer_is_rejected(tmp_path: Path, tgen: torch.Generator) -> None:
    f = tmp_path / "m.safetensors"
    save(compressed(tgen), f)
    wrong = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"m\.safetensors: the model has no layer 'features\.3' to replace"):
        load(f, model=wrong)
    skel = Net()
    back = load(f, model=skel)
    assert isinstance(back.features[3], LowRankSparseConv2d) and isinstance(skel.features[3], nn.Conv2d)
