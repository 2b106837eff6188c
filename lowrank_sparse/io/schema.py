"""The schema of a saved file's header, checked in one place before anything else reads
it: the safetensors entries (types, shapes, byte ranges against the file) and the string
metadata, and for a lowrank_sparse file of a readable version the types of its JSON
metadata values.

Every violation is a ValueError that names the file and the field; nothing here
allocates more than the header, and no check is more than linear in its size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .container import FLOAT_DTYPES, ST_DTYPE_SIZE

__all__ = ["FORMAT", "SCHEMA_VERSION", "READABLE_VERSIONS", "tensor_entries", "check_header", "decode_json"]

#: value of the ``format`` metadata key of every file this library writes
FORMAT = "lowrank_sparse"
SCHEMA_VERSION = 3
#: Schema versions :func:`lowrank_sparse.load` reads (1: no AQ part; 2: optional AQ part;
#: 3: packed sparse indices).
READABLE_VERSIONS = (1, 2, 3)

_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


def tensor_entries(header: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, entry) of every tensor of a safetensors header (the metadata left out)."""
    return [(k, v) for k, v in header.items() if k != "__metadata__"]


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _nbytes(shape: list[int], esize: int, cap: int) -> int:
    """numel(shape) * esize, or cap + 1 as soon as the product exceeds ``cap``."""
    if 0 in shape:
        return 0
    n = esize
    for d in shape:
        n *= d
        if n > cap:
            return cap + 1
    return n


def _entry_range(path: Path, name: str, info: Any, data_len: int) -> tuple[int, int]:
    """The byte range [lo, hi) of one tensor entry, checked against its shape and dtype."""
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        raise ValueError(f"{path}: corrupt safetensors header entry for {name!r} (needs exactly {sorted(_ENTRY_KEYS)})")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ST_DTYPE_SIZE:
        raise ValueError(f"{path}: corrupt safetensors header entry for {name!r} (dtype {dtype!r})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ValueError(f"{path}: corrupt safetensors header entry for {name!r} (shape {shape!r})")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise ValueError(f"{path}: corrupt safetensors header entry for {name!r} (data_offsets {offsets!r})")
    lo, hi = offsets
    if lo > hi or hi > data_len or _nbytes(shape, ST_DTYPE_SIZE[dtype], hi - lo) != hi - lo:
        raise ValueError(f"{path}: truncated or corrupt (tensor {name!r} needs bytes {lo}..{hi} for shape {shape} "
                         f"{dtype}, data has {data_len})")  # fmt: skip
    return lo, hi


def _check_entries(path: Path, header: dict[str, Any], data_len: int) -> None:
    """Every entry well typed, its range fitting its shape and dtype, and the ranges
    tiling the data section: in order, without overlaps or gaps, up to its end."""
    ranges = sorted((*_entry_range(path, name, info, data_len), name) for name, info in tensor_entries(header))
    end = 0
    for lo, hi, name in ranges:
        if lo != end:
            what = "overlaps the tensor before it" if lo < end else f"leaves bytes {end}..{lo} unused"
            raise ValueError(f"{path}: corrupt safetensors header (tensor {name!r} at bytes {lo}..{hi} {what})")
        end = hi
    if end != data_len:
        raise ValueError(f"{path}: corrupt or truncated (data section is {data_len} bytes, tensors cover {end})")


def decode_json(path: Path, key: str, text: Any) -> Any:
    """The JSON value of metadata ``key``; ValueError naming it when it is no JSON text
    (including nesting too deep for the parser)."""
    if not isinstance(text, str):
        raise ValueError(f"{path}: corrupt lowrank_sparse metadata ({key} must be a JSON string)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: corrupt lowrank_sparse metadata ({key} is not JSON: {e})") from None


def _is_float_dtype_name(name: Any) -> bool:
    dt = getattr(torch, name, None) if isinstance(name, str) else None
    return isinstance(dt, torch.dtype) and dt.is_floating_point


def _arch_ok(a: Any) -> bool:
    return a is None or (isinstance(a, dict) and set(a) == {"name", "kwargs"} and isinstance(a["name"], str)
                         and isinstance(a["kwargs"], dict))  # fmt: skip


def _part_ok(info: Any) -> bool:
    names = info.get("tensors") if isinstance(info, dict) else None
    return isinstance(names, list) and all(isinstance(n, str) for n in names)


#: metadata keys holding a JSON object, and the check of each of its values
_ITEMS_OK = {
    "layers": lambda c: isinstance(c, dict) and isinstance(c.get("class"), str),
    "sparse_indices": _part_ok,
}
_REQUIRED = ("arch", "layers")


def _check_dtypes(path: Path, text: str, header: dict[str, Any]) -> None:
    """``dtypes``: {stored floating tensor: name of a floating torch dtype}."""
    dtypes = decode_json(path, "dtypes", text)
    if not isinstance(dtypes, dict):
        raise ValueError(f"{path}: corrupt lowrank_sparse metadata (dtypes must be a JSON object)")
    for name, dt in dtypes.items():
        stored = header.get(name) if name != "__metadata__" else None
        if not _is_float_dtype_name(dt) or not isinstance(stored, dict) or stored.get("dtype") not in FLOAT_DTYPES:
            raise ValueError(f"{path}: corrupt lowrank_sparse metadata (dtypes[{name!r}] = {dt!r} does not name a "
                             "floating dtype of a stored floating tensor)")  # fmt: skip


def _check_lowrank_sparse(path: Path, meta: dict[str, str], header: dict[str, Any]) -> None:
    """The JSON values of a lowrank_sparse file's metadata have the types the readers use."""
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{path}: corrupt lowrank_sparse metadata (no {missing[0]!r} key)")
    if not _arch_ok(decode_json(path, "arch", meta["arch"])):
        raise ValueError(f"{path}: corrupt lowrank_sparse metadata (arch must be null or {{name: str, kwargs: {{}}}})")
    if "user" in meta:
        decode_json(path, "user", meta["user"])
    for key, ok in _ITEMS_OK.items():
        value = decode_json(path, key, meta[key]) if key in meta else {}
        if not isinstance(value, dict):
            raise ValueError(f"{path}: corrupt lowrank_sparse metadata ({key} must be a JSON object)")
        bad = next((name for name, item in value.items() if not ok(item)), None)
        if bad is not None:
            raise ValueError(f"{path}: corrupt lowrank_sparse metadata ({key} entry {bad!r} does not have the "
                             "expected structure)")  # fmt: skip
    if "dtypes" in meta:
        _check_dtypes(path, meta["dtypes"], header)


def check_header(path: Path, header: Any, data_len: int) -> None:
    """The whole schema check of a parsed header (see the module docstring).

    The lowrank_sparse part runs only for a file whose ``format`` and ``schema_version``
    this library reads; telling other files and versions apart (with their own messages)
    is left to :func:`lowrank_sparse.io.read_metadata`.

    Raises:
        ValueError: naming ``path`` and the first field that violates the schema.
    """
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.get("__metadata__")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    _check_entries(path, header, data_len)
    if meta.get("format") == FORMAT and meta.get("schema_version") in {str(v) for v in READABLE_VERSIONS}:
        _check_lowrank_sparse(path, meta, header)
