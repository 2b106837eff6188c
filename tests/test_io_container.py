"""io/container.py: the safetensors layout this library writes is safetensors' own (the
bytes of ``safetensors.torch.save`` for the same tensors and one metadata key), readable
by safetensors, with the metadata keys in sorted order."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch

from lowrank_sparse.io.container import ST_TAGS, encode_header, write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    """Every dtype the writer stores, in several shapes (empty, scalar, 2-D), names with
    non-ASCII and control characters."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for dt in ST_TAGS:
        for j, shape in enumerate([(3,), (2, 0), (), (5, 7)]):
            out[f"{str(dt)[6:]}.{j}\u00e9\n"] = (torch.randn(shape, generator=g) * 50).to(dt)
    return out


def test_bytes_equal_safetensors_own(tmp_path: Path) -> None:
    from safetensors.torch import save

    tensors = _tensors()
    meta = {"only": "\u00e9\n\x01\x7f\u2028\"\\"}
    f = tmp_path / "c.safetensors"
    write_safetensors(f, tensors, meta)
    assert f.read_bytes() == save(tensors, metadata=meta)
    g = tmp_path / "none.safetensors"
    write_safetensors(g, tensors, None)
    assert g.read_bytes() == save(tensors)


def test_metadata_sorted_and_readable_by_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    tensors = _tensors()
    meta = {"b": "2", "c": "3", "a": "1"}
    f = tmp_path / "m.safetensors"
    write_safetensors(f, tensors, meta)
    blob = f.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0 and list(json.loads(blob[8 : 8 + n])["__metadata__"]) == ["a", "b", "c"]
    with safe_open(str(f), framework="pt") as st:
        assert st.metadata() == meta
        for k, t in tensors.items():
            got = st.get_tensor(k)
            assert got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


def test_refuses_what_safetensors_cannot_store(tmp_path: Path) -> None:
    f = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="'s': only dense CPU tensors"):
        write_safetensors(f, {"s": torch.eye(3).to_sparse()}, None)
    with pytest.raises(ValueError, match="'c': dtype torch.complex128"):
        write_safetensors(f, {"c": torch.zeros(2, dtype=torch.complex128)}, None)
    with pytest.raises(ValueError, match="strings to strings"):
        write_safetensors(f, {}, {"k": 1})  # type: ignore[dict-item]
    assert not f.exists() and list(tmp_path.iterdir()) == []


def test_header_offsets() -> None:
    items = [("a", torch.zeros(2, 3), "F32"), ("b", torch.zeros(0), "F32"),
             ("c", torch.zeros(5, dtype=torch.uint8), "U8")]
    blob = encode_header(items, {"k": "v"})
    header = json.loads(blob[8:])
    assert [header[k]["data_offsets"] for k in "abc"] == [[0, 24], [24, 24], [24, 29]]
    assert io.BytesIO(blob).read(8) == struct.pack("<Q", len(blob) - 8)
