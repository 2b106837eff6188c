"""io/schema.py: the header schema (entry types, byte ranges tiling the data section,
string metadata, the types of a lowrank_sparse file's JSON metadata), checked by
read_header before any reader uses the header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from io_fixtures import compressed, raw_header, write_raw  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse.io import read_metadata, save
from lowrank_sparse.io.header import read_header


def _entry(dtype: str, shape: list, lo: object, hi: object) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [lo, hi]}


_GOOD = {"a": _entry("F32", [2, 3], 0, 24), "e": _entry("I64", [0, 5], 24, 24), "b": _entry("U8", [5], 24, 29)}


@pytest.mark.parametrize("case", [
    ("reversed", {"b": _entry("U8", [5], 29, 24)}, "tensor 'b' needs bytes 29..24"),
    ("duplicated", {"c": _entry("U8", [5], 24, 29)}, "tensor 'c' at bytes 24..29 overlaps"),
    ("overlapping", {"b": _entry("U8", [5], 20, 25)}, "tensor 'b' at bytes 20..25 overlaps"),
    ("gap-inside", {"a": _entry("F32", [2, 2], 0, 16)}, "leaves bytes 16..24 unused"),
    ("negative-dim", {"a": _entry("F32", [-2, -3], 0, 24)}, r"entry for 'a' \(shape"),
    ("bool-dim", {"b": _entry("U8", [True], 24, 25)}, r"entry for 'b' \(shape"),
    ("float-dim", {"b": _entry("U8", [5.0], 24, 29)}, r"entry for 'b' \(shape"),
    ("string-offsets", {"b": _entry("U8", [5], "24", "29")}, r"entry for 'b' \(data_offsets"),
    ("three-offsets", {"b": {"dtype": "U8", "shape": [5], "data_offsets": [24, 29, 30]}}, "data_offsets"),
    ("negative-offset", {"b": _entry("U8", [5], -1, 4)}, "data_offsets"),
    ("dtype-not-string", {"b": _entry(["U8"], [5], 24, 29)}, r"entry for 'b' \(dtype"),
    ("extra-key", {"b": {**_entry("U8", [5], 24, 29), "x": 1}}, "needs exactly"),
    ("entry-not-object", {"b": [24, 29]}, "entry for 'b'"),
    ("metadata-not-strings", {"__metadata__": {"k": 1}}, "__metadata__ must map names to strings"),
], ids=lambda c: c[0])  # fmt: skip
def test_entries_that_break_the_schema(case: tuple, tmp_path: Path) -> None:
    _, change, pattern = case
    f = tmp_path / "h.safetensors"
    write_raw(f, {**_GOOD, **change}, bytes(29))
    with pytest.raises(ValueError, match=rf"h\.safetensors: .*{pattern}"):
        read_header(f)


def test_schema_accepts_what_safetensors_accepts(tmp_path: Path) -> None:
    """Empty tensors sharing an offset, a null or missing __metadata__, any metadata
    strings of another library: all valid headers (safetensors reads them too)."""
    from safetensors.torch import load_file

    for meta in ({"__metadata__": None}, {}, {"__metadata__": {"format": "pt", "k": "[1, 2]"}}):
        f = tmp_path / "ok.safetensors"
        header = {**meta, **_GOOD, "z": _entry("F16", [3, 0], 29, 29), "y": _entry("BOOL", [0], 0, 0)}
        write_raw(f, header, bytes(29))
        got, start = read_header(f)
        assert got == header and start == 8 + len(json.dumps(header).encode())
        assert sorted(load_file(str(f))) == sorted(k for k in header if k != "__metadata__")


def _saved_with(tmp_path: Path, tgen: torch.Generator, **changes: str) -> Path:
    """A saved file whose metadata strings are replaced by ``changes`` (None: removed)."""
    f = tmp_path / "m.safetensors"
    save(compressed(tgen), f, dtype="float16")
    header = raw_header(f)
    meta = header["__metadata__"]
    for k, v in changes.items():
        meta.pop(k) if v is None else meta.__setitem__(k, v)
    blob = f.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    g = tmp_path / "bad.safetensors"
    write_raw(g, header, blob[8 + n :])
    return g


@pytest.mark.parametrize("changes, pattern", [
    ({"layers": "[" * 50_000 + "]" * 50_000}, r"layers is not JSON: maximum recursion"),
    ({"user": "[" * 50_000 + "]" * 50_000}, r"user is not JSON"),
    ({"sparse_indices": "{"}, r"sparse_indices is not JSON"),
    ({"layers": None}, r"no 'layers' key"),
    ({"arch": '{"name": "vgg16"}'}, r"arch must be null or"),
    ({"arch": '"vgg16"'}, r"arch must be null or"),
    ({"layers": '{"fc": {"class": 3}}'}, r"layers entry 'fc'"),
    ({"layers": '{"fc": [1]}'}, r"layers entry 'fc'"),
    ({"sparse_indices": '{"fc.sparse": {"tensors": [1]}}'}, r"sparse_indices entry 'fc.sparse'"),
    ({"sparse_indices": '[]'}, r"sparse_indices must be a JSON object"),
    ({"dtypes": '{"fc.U": "int32"}'}, r"dtypes\['fc.U'\] = 'int32'"),
    ({"dtypes": '{"fc.U": "Tensor"}'}, r"dtypes\['fc.U'\] = 'Tensor'"),
    ({"dtypes": '{"fc.sparse.support.packed": "float32"}'}, r"stored floating tensor"),
    ({"dtypes": '{"no.such.tensor": "float32"}'}, r"stored floating tensor"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)  # fmt: skip
def test_lowrank_sparse_metadata_types(changes: dict, pattern: str, tmp_path: Path, tgen: torch.Generator) -> None:
    f = _saved_with(tmp_path, tgen, **changes)
    with pytest.raises(ValueError, match=rf"bad\.safetensors: corrupt lowrank_sparse metadata \(.*{pattern}"):
        read_header(f)
    with pytest.raises(ValueError, match=r"bad\.safetensors: corrupt"):
        read_metadata(f)


def test_metadata_of_other_versions_is_left_to_the_version_check(tmp_path: Path, tgen: torch.Generator) -> None:
    """Garbage metadata in a file of an unreadable version: the message is about the
    version (the schema of a version this library does not know is not checked)."""
    f = _saved_with(tmp_path, tgen, schema_version="9", layers="[1]")
    read_header(f)
    with pytest.raises(ValueError, match="schema version '9' is not supported"):
        read_metadata(f)
