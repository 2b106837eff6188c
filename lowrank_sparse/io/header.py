"""The safetensors container: header parsing and validation (entry shapes / offsets
against the file size), the format tag, the schema versions, and the tensor checksum."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "SCHEMA_VERSION", "READABLE_VERSIONS", "FLOAT_DTYPES", "read_header", "digest", "tensor_entries"]

#: value of the ``format`` metadata key of every file this library writes
FORMAT = "lowrank_sparse"
SCHEMA_VERSION = 3
#: Schema versions :func:`lowrank_sparse.load` reads (1: no AQ part; 2: optional AQ part;
#: 3: packed sparse indices).
READABLE_VERSIONS = (1, 2, 3)

#: bytes per element of each safetensors dtype tag
_ST_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                  "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
#: the floating-point safetensors dtype tags
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_MAX_HEADER = 100_000_000


def _parse_json_header(path: Path, f: Any, size: int) -> tuple[dict[str, Any], int]:
    head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > _MAX_HEADER:
        raise ValueError(f"{path}: not a safetensors file or truncated (header of {n} bytes, file of {size})")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt or not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header")
    return header, n


def _check_entries(path: Path, header: dict[str, Any], data_len: int) -> None:
    """Every tensor's byte range fits its shape and dtype and lies in the data section,
    and the ranges cover the data section exactly up to its end."""
    end = 0
    for name, info in tensor_entries(header):
        try:
            lo, hi = info["data_offsets"]
            numel = 1
            for d in info["shape"]:
                numel *= int(d)
            esize = _ST_DTYPE_SIZE[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if hi - lo != numel * esize or hi > data_len or lo < 0:
            raise ValueError(f"{path}: truncated or corrupt (tensor {name!r} needs bytes {lo}..{hi}, data has {data_len})")
        end = max(end, hi)
    if end != data_len:
        raise ValueError(f"{path}: corrupt or truncated (data section is {data_len} bytes, tensors cover {end})")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse and validate the safetensors header of ``path``.

    Returns:
        (header, data offset): the JSON header ({tensor name: {dtype, shape,
        data_offsets}} and "__metadata__") and the byte where the data section starts
        (8 + header length).

    Raises:
        ValueError: not a safetensors file, a corrupt header, or a data section that
            does not match the entries (truncated file).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header, n = _parse_json_header(path, f, size)
    _check_entries(path, header, size - 8 - n)
    return header, 8 + n


def tensor_entries(header: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, entry) of every tensor of a safetensors header (the metadata left out)."""
    return [(k, v) for k, v in header.items() if k != "__metadata__"]


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and bytes, in name order (the ``checksum`` key)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
