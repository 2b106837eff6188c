"""The safetensors byte layout, written by this library: an 8-byte little-endian header
length, the JSON header (``__metadata__`` first, then one ``{dtype, shape,
data_offsets}`` entry per tensor, space-padded to a multiple of 8 bytes) and the tensors'
raw little-endian bytes back to back.

The layout is the one ``safetensors.torch.save_file`` writes (tensors ordered by dtype,
widest first, then by name; compact JSON), except that the metadata keys are sorted:
safetensors writes them in a per-process random order, so the same model saved twice
gave different bytes.  Here the same tensors and metadata always give the same file.
"""

from __future__ import annotations

import json
import os
import struct
from typing import BinaryIO

import torch

from .atomic import atomic_write

__all__ = ["ST_DTYPE_SIZE", "FLOAT_DTYPES", "ST_TAGS", "encode_header", "write_tensor", "write_safetensors"]

#: safetensors dtype tag of each torch dtype this writer stores
ST_TAGS: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.complex64: "C64",
}  # fmt: skip
#: bytes per element of each safetensors dtype tag (the ones this library reads)
ST_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                 "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}  # fmt: skip
#: the floating-point safetensors dtype tags
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
#: data-section order of the tags (safetensors' own: its dtype enum, last first)
_ORDER = {tag: i for i, tag in enumerate(("U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16",
                                          "I16", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"))}  # fmt: skip


def _tag(name: str, t: torch.Tensor) -> str:
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.device.type != "cpu":
        raise ValueError(f"tensor {name!r}: only dense CPU tensors can be saved")
    if t.dtype not in ST_TAGS:
        raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be stored in safetensors")
    return ST_TAGS[t.dtype]


def _ordered(tensors: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor, str]]:
    """(name, tensor, tag) in data-section order."""
    items = [(name, t, _tag(name, t)) for name, t in tensors.items()]
    return sorted(items, key=lambda it: (_ORDER[it[2]], it[0]))


def encode_header(items: list[tuple[str, torch.Tensor, str]], metadata: dict[str, str] | None) -> bytes:
    """The length prefix and the padded JSON header of ``items`` (in data-section order)."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    pos = 0
    for name, t, tag in items:
        nbytes = t.numel() * ST_DTYPE_SIZE[tag]
        header[name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_tensor(f: BinaryIO, t: torch.Tensor) -> None:
    """Append the raw bytes of ``t`` (contiguous, CPU, little-endian host) to ``f``."""
    if t.numel():
        f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None) -> None:
    """Write ``tensors`` and string ``metadata`` as a safetensors file at ``path``,
    atomically (:func:`lowrank_sparse.io.atomic.atomic_write`).

    Raises:
        ValueError: a tensor that is not dense / on the CPU, or of a dtype safetensors has no
            tag for; a metadata value that is not a string.
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata must map strings to strings")
    items = _ordered(tensors)
    head = encode_header(items, metadata)
    with atomic_write(path) as f:
        f.write(head)
        for _, t, _ in items:
            write_tensor(f, t)
