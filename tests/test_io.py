"""save/load: bitwise round trip, compact file size, clear errors on bad files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from lowrank_sparse.io import file_report, load, read_metadata, save
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from sparse_fixtures import random_decomposition  # tests/ is on sys.path (pytest rootdir conftest)


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
    net.features[3] = LowRankSparseConv2d.from_conv(c, random_decomposition(16, 144, 4, kind_conv, g, block=9))
    net.fc = LowRankSparseLinear.from_decomposition(random_decomposition(10, 64, 3, kind_fc, g), bias=net.fc.bias)
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
    dec = random_decomposition(512, 512, 16, "unstructured", tgen)
    mod = LowRankSparseLinear.from_decomposition(dec, bias=torch.zeros(512))
    f = tmp_path / "l.safetensors"
    save(mod, f)
    expected = mod.num_params() * 4 + mod.sparse.num_index_bytes(packed=True)
    assert expected < 0.3 * 512 * 512 * 4  # far below the dense layer (1 MiB)
    assert abs(f.stat().st_size - expected) <= 0.05 * expected
    # the indices are stored packed: near the entropy of the support (p = 0.1: 0.47 bits per
    # entry) + 10 bits of row count per row, far below int32 CSR (crow + one int32 per value)
    nnz, p = int(torch.count_nonzero(dec.S)), 0.1
    entropy = 512 * 512 * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
    assert file_report(f)["indices"] == mod.sparse.num_index_bytes(packed=True) <= 1.1 * entropy + 512 * 10 / 8
    assert mod.sparse.num_index_bytes(packed=True) < 0.25 * (4 * nnz + 4 * 513)
    f16 = tmp_path / "h.safetensors"
    save(mod, f16, dtype="float16")
    expected16 = mod.num_params() * 2 + mod.sparse.num_index_bytes(packed=True)
    assert abs(f16.stat().st_size - expected16) <= 0.05 * expected16
    back = load(f16, model=nn.Linear(512, 512))
    assert back.U.dtype == torch.float32
    torch.testing.assert_close(back.U, mod.U.detach().half().float(), rtol=0, atol=0)


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



@pytest.mark.parametrize("kinds", [("channel", "unstructured"), ("row", "2:4")], ids="-".join)
def test_version2_file_with_plain_indices_still_loads(kinds: tuple[str, str], tmp_path: Path,
                                                      tgen: torch.Generator) -> None:
    """A file in the version-2 layout (index buffers stored as they are in the state dict),
    written here by hand from its documented schema."""
    from safetensors.torch import save_file

    net = compressed(tgen, *kinds)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    layers = {"features.3": net.features[3].config(), "fc": net.fc.config()}
    meta = {"format": "lowrank_sparse", "schema_version": "2", "arch": "null", "layers": json.dumps(layers),
            "dtypes": "{}", "user": "{}"}  # fmt: skip
    f = tmp_path / "v2.safetensors"
    save_file(state, str(f), metadata=meta)
    assert read_metadata(f)["schema_version"] == 2
    back = load(f, model=Net())
    x = torch.randn(2, 3, 8, 8, generator=tgen)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    # the same model saved now (version 3) is smaller: packed indices
    f3 = tmp_path / "v3.safetensors"
    save(net, f3)
    assert file_report(f3)["indices"] < file_report(f)["indices"]
    # packed indices in a version-2 file are rejected
    header = _header(f3)
    bad = tmp_path / "v2packed.safetensors"
    from safetensors.torch import load_file

    save_file(load_file(str(f3)), str(bad), metadata={**header["__metadata__"], "schema_version": "2"})
    with pytest.raises(ValueError, match=r"v2packed\.safetensors.*packed sparse indices in a schema-version-2"):
        load(bad, model=Net())


def _header(path: Path) -> dict:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])


@pytest.mark.parametrize("kinds", [("channel", "unstructured"), ("row", "2:4")], ids="-".join)
def test_packed_indices_in_file(kinds: tuple[str, str], tmp_path: Path, tgen: torch.Generator) -> None:
    net = compressed(tgen, *kinds)
    f = tmp_path / "m.safetensors"
    save(net, f)
    header = _header(f)
    # no plain index buffer in the file, only uint8 packed tensors under the sparse parts
    for part in ("features.3.sparse", "fc.sparse"):
        names = [k for k in header if k.startswith(part + ".") and not k.endswith(".values")]
        assert names and all(header[k]["dtype"] == "U8" for k in names), names
        mod = net.get_submodule(part)
        assert sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in names) == mod.num_index_bytes(packed=True)
        assert not any(k.split(".")[-1] in mod.index_names for k in names)
    info = read_metadata(f)
    assert set(info["sparse_indices"]) == {"features.3.sparse", "fc.sparse"}


def test_corrupt_packed_indices_in_file(tmp_path: Path, tgen: torch.Generator) -> None:
    from safetensors.torch import load_file, save_file

    net = compressed(tgen, "row", "unstructured")
    f = tmp_path / "m.safetensors"
    save(net, f)
    tensors, meta = load_file(str(f)), _header(f)["__metadata__"]
    key = next(k for k in tensors if k.startswith("fc.sparse.support."))
    short = {**tensors, key: tensors[key][:-1].clone()}
    meta2 = {k: v for k, v in meta.items() if k != "checksum"}  # checksum absent: the parts are still checked
    bad = tmp_path / "short.safetensors"
    save_file(short, str(bad), metadata=meta2)
    with pytest.raises(ValueError, match=r"short\.safetensors.*cannot decode the packed indices of 'fc\.sparse'"):
        load(bad, model=Net())
    missing = {k: v for k, v in tensors.items() if k != key}
    bad = tmp_path / "missing.safetensors"
    save_file(missing, str(bad), metadata=meta2)
    with pytest.raises(ValueError, match=rf"missing\.safetensors.*missing packed index tensor '{key}'"):
        load(bad, model=Net())
    si = json.loads(meta["sparse_indices"])
    si["features.3.sparse"].pop("tensors")
    bad = tmp_path / "meta.safetensors"
    save_file(tensors, str(bad), metadata={**meta2, "sparse_indices": json.dumps(si)})
    with pytest.raises(ValueError, match=r"meta\.safetensors.*sparse_indices entry 'features\.3\.sparse'"):
        load(bad, model=Net())
