"""Reading the safetensors container: the header parsed (bounded: its length against the
file, its JSON nesting against the parser's depth) and checked against the schema
(:mod:`.schema`), and the tensor checksum.  The format tag, schema versions and dtype
tags are re-exported from :mod:`.schema` and :mod:`.container`, where they live."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .container import FLOAT_DTYPES
from .schema import FORMAT, READABLE_VERSIONS, SCHEMA_VERSION, check_header, tensor_entries

__all__ = ["FORMAT", "SCHEMA_VERSION", "READABLE_VERSIONS", "FLOAT_DTYPES", "read_header", "digest", "tensor_entries"]

_MAX_HEADER = 100_000_000


def _parse_json_header(path: Path, f: BinaryIO, size: int) -> tuple[Any, int]:
    """(parsed JSON header, its length in bytes); ValueError for a length the file cannot
    hold, bytes that are not UTF-8 JSON, or JSON nested deeper than the parser goes."""
    head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > _MAX_HEADER:
        raise ValueError(f"{path}: not a safetensors file or truncated (header of {n} bytes, file of {size})")
    raw = f.read(n)
    try:
        return json.loads(raw.decode("utf-8")), n
    except RecursionError:
        raise ValueError(f"{path}: corrupt or not a safetensors file (header JSON is nested too deeply)") from None
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, an integer too long to convert
        raise ValueError(f"{path}: corrupt or not a safetensors file (header is not JSON: {e})") from None


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse the safetensors header of ``path`` and check it against the schema
    (:func:`lowrank_sparse.io.schema.check_header`).

    Returns:
        (header, data offset): the JSON header ({tensor name: {dtype, shape,
        data_offsets}} and "__metadata__") and the byte where the data section starts
        (8 + header length).

    Raises:
        ValueError: not a safetensors file, a corrupt header (badly typed fields, negative
            shapes, byte ranges that overlap, leave gaps or do not fit shape and dtype,
            badly typed lowrank_sparse metadata), or a truncated file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header, n = _parse_json_header(path, f, size)
    check_header(path, header, size - 8 - n)
    return header, 8 + n


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and bytes, in name order (the ``checksum`` key)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
