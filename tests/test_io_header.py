"""io/header.py: the safetensors container (header parsing, entry offsets, schema version,
checksum), and load()'s clear errors on bad files."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from io_fixtures import Net, compressed, write_raw  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse.io import load, save
from lowrank_sparse.io.header import digest, read_header


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
    write_raw(wrong, header, blob[8 + n :])
    with pytest.raises(ValueError, match="wrong.safetensors.*schema version '99'"):
        load(wrong, model=Net())

    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(ValueError, match="not a lowrank_sparse file"):
        load(plain)

    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


def _entry(dtype: str, shape: list[int], lo: int, hi: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [lo, hi]}


def test_read_header_checks_offsets_against_shapes(tmp_path: Path) -> None:
    f = tmp_path / "h.safetensors"
    header = {"__metadata__": {"k": "v"}, "a": _entry("F32", [2, 3], 0, 24), "b": _entry("U8", [5], 24, 29)}
    write_raw(f, header, bytes(29))
    got, start = read_header(f)
    assert got == header and start == 8 + len(json.dumps(header).encode())
    bad = {
        "size-mismatch": ({**header, "b": _entry("U8", [6], 24, 29)}, 29, "tensor 'b' needs bytes 24..29"),
        "past-the-end": ({**header, "b": _entry("U8", [5], 25, 30)}, 29, "truncated or corrupt"),
        "gap-at-end": (header, 31, "tensors cover 29"),
        "unknown-dtype": ({**header, "a": _entry("X9", [2, 3], 0, 24)}, 29, "header entry for 'a'"),
        "not-an-object": ([1, 2], 0, "corrupt safetensors header"),
    }
    for name, (h, n, pattern) in bad.items():
        g = tmp_path / f"{name}.safetensors"
        write_raw(g, h, bytes(n))
        with pytest.raises(ValueError, match=pattern):
            read_header(g)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ValueError, match="header of 1000000000000 bytes"):
        read_header(huge)


def test_digest_is_sha256_of_names_and_bytes_in_name_order() -> None:
    tensors = {"b": torch.arange(3, dtype=torch.int32), "a": torch.tensor([1.5, -2.0]), "e": torch.zeros(0)}
    h = hashlib.sha256()
    for name, raw in (("a", struct.pack("<2f", 1.5, -2.0)), ("b", struct.pack("<3i", 0, 1, 2)), ("e", b"")):
        h.update(name.encode())
        h.update(raw)
    assert digest(tensors) == h.hexdigest()
    assert digest({**tensors, "a": torch.tensor([1.5, -2.5])}) != h.hexdigest()
