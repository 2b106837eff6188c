"""save/load: bitwise round trip, compact file size, clear errors on bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from lowrank_sparse.io import load, read_metadata, save
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.solve.result import Decomposition, SolveInfo
from lowrank_sparse.structure import parse_structure


def sparse_dec(m: int, n: int, r: int, kind: str, g: torch.Generator, block: int = 1) -> Decomposition:
    U, V = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
    W = torch.randn(m, n, generator=g)
    if kind == "row":
        mask = (torch.rand(m, 1, generator=g) < 0.2).expand(m, n)
    elif kind == "channel":
        mask = (torch.rand(1, n // block, 1, generator=g) < 0.3).expand(m, n // block, block).reshape(m, n)
    elif kind == "2:4":
        idx = torch.rand(m, n // 4, 4, generator=g).argsort(dim=2)[..., :2]
        mask = torch.zeros(m, n // 4, 4, dtype=torch.bool).scatter(2, idx, True).reshape(m, n)
    else:
        mask = torch.rand(m, n, generator=g) < 0.1
    return Decomposition(U, V, W * mask, parse_structure(kind, block=block), SolveInfo())


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))  # fmt: skip
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def compressed(g: torch.Generator, kind_conv: str = "channel", kind_fc: str = "unstructured") -> Net:
    torch.manual_seed(0)
    net = Net()
    net.features[1].running_mean.normal_()
    c = net.features[3]
    net.features[3] = LowRankSparseConv2d.from_conv(c, sparse_dec(16, 144, 4, kind_conv, g, block=9))
    net.fc = LowRankSparseLinear.from_decomposition(sparse_dec(10, 64, 3, kind_fc, g), bias=net.fc.bias)
    return net.eval()


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


def test_file_size_reflects_compression(tmp_path: Path, tgen: torch.Generator) -> None:
    mod = LowRankSparseLinear.from_decomposition(sparse_dec(512, 512, 16, "unstructured", tgen), bias=torch.zeros(512))
    f = tmp_path / "l.safetensors"
    save(mod, f)
    expected = mod.num_params() * 4 + mod.num_index_bytes()
    assert expected < 0.3 * 512 * 512 * 4  # far below the dense layer (1 MiB)
    assert abs(f.stat().st_size - expected) <= 0.05 * expected
    f16 = tmp_path / "h.safetensors"
    save(mod, f16, dtype="float16")
    expected16 = mod.num_params() * 2 + mod.num_index_bytes()
    assert abs(f16.stat().st_size - expected16) <= 0.05 * expected16
    back = load(f16, model=nn.Linear(512, 512))
    assert back.U.dtype == torch.float32
    torch.testing.assert_close(back.U, mod.U.detach().half().float(), rtol=0, atol=0)


def test_whole_module_and_arch_recorded(tmp_path: Path, tgen: torch.Generator) -> None:
    mod = LowRankSparseConv2d.from_conv(nn.Conv2d(4, 6, 3), sparse_dec(6, 36, 2, "row", tgen))
    f = tmp_path / "c.safetensors"
    save(mod, f, metadata={"arch": {"name": "vgg16", "kwargs": {"num_classes": 10}}})
    meta = read_metadata(f)
    assert meta["arch"] == {"name": "vgg16", "kwargs": {"num_classes": 10}} and meta["schema_version"] == 2
    assert meta["layers"][""]["class"] == "LowRankSparseConv2d"
    back = load(f, model=nn.Conv2d(4, 6, 3))
    x = torch.randn(1, 4, 5, 5, generator=tgen)
    assert torch.equal(back(x), mod(x))


def test_no_arch_needs_model(tmp_path: Path, tgen: torch.Generator) -> None:
    f = tmp_path / "m.safetensors"
    save(compressed(tgen), f)
    with pytest.raises(ValueError, match="model="):
        load(f)


def _write_raw(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_bad_files(tmp_path: Path, tgen: torch.Generator) -> None:
    good = tmp_path / "good.safetensors"
    save(compressed(tgen), good)
    blob = good.read_bytes()

    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(ValueError, match="trunc.safetensors.*truncated"):
        load(trunc, model=Net())

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"hello world, definitely not safetensors" * 3)
    with pytest.raises(ValueError, match="garbage.bin.*not a safetensors"):
        load(garbage, model=Net())

    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"abc")
    with pytest.raises(ValueError, match="tiny.bin"):
        load(tiny, model=Net())

    corrupt = tmp_path / "corrupt.safetensors"
    b = bytearray(blob)
    b[-5] ^= 0xFF  # flip bits in the last tensor's data
    corrupt.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="corrupt.safetensors.*checksum"):
        load(corrupt, model=Net())

    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"]["schema_version"] = "99"
    wrong = tmp_path / "wrong.safetensors"
    _write_raw(wrong, header, blob[8 + n :])
    with pytest.raises(ValueError, match="wrong.safetensors.*schema version '99'"):
        load(wrong, model=Net())

    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(ValueError, match="not a lowrank_sparse file"):
        load(plain)

    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


def test_save_validation(tmp_path: Path, tgen: torch.Generator) -> None:
    net = compressed(tgen)
    with pytest.raises(ValueError, match="dtype"):
        save(net, tmp_path / "x.safetensors", dtype="int8")
    with pytest.raises(ValueError, match="JSON"):
        save(net, tmp_path / "x.safetensors", metadata={"obj": object()})
    with pytest.raises(TypeError, match="nn.Module"):
        save("net", tmp_path / "x.safetensors")  # type: ignore[arg-type]


def test_bfloat16_and_tied_weights(tmp_path: Path, tgen: torch.Generator) -> None:
    emb = nn.Linear(4, 4, bias=False)
    net = nn.Sequential(emb, nn.ReLU(), nn.Linear(4, 4, bias=False))
    net[2].weight = emb.weight  # shared storage
    f = tmp_path / "t.safetensors"
    save(net, f, dtype=torch.bfloat16)
    skel = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False))
    back = load(f, model=skel)
    torch.testing.assert_close(back[2].weight, emb.weight.detach().bfloat16().float(), rtol=0, atol=0)
    assert skel[0].weight.data_ptr() != back[0].weight.data_ptr()  # the skeleton is untouched
