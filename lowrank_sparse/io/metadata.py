"""read_metadata() and file_report(): what a saved file says about itself, from its
header alone (no tensor data is read)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .aq import aq_names, parse_aq
from .header import FLOAT_DTYPES, FORMAT, READABLE_VERSIONS, read_header, tensor_entries

__all__ = ["read_metadata", "file_report"]

_PARTS = ("header", "float_values", "indices", "aq_codes", "aq_codebooks", "aq_scales", "other")


def _check_format(p: Path, meta: dict[str, str]) -> int:
    """The schema version of a lowrank_sparse file; ValueError for another file or an
    unsupported version."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: not a lowrank_sparse file (safetensors metadata has no format={FORMAT!r})")
    ver = meta.get("schema_version")
    if ver not in {str(v) for v in READABLE_VERSIONS}:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise ValueError(f"{p}: schema version {ver!r} is not supported (this library reads versions {readable})")
    return int(ver)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded header of a file written by :func:`lowrank_sparse.save`: schema_version
    (int), arch, layers, dtypes, checksum, user, sparse_indices ({} before version 3), and
    aq (None, or {"format", "codebook_dtype", "entries": [...], "raw": the header strings}).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, truncated, not written by lowrank_sparse,
            written with an unsupported schema version, or corrupt metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    header, _ = read_header(p)
    meta = header.get("__metadata__") or {}
    version = _check_format(p, meta)
    try:
        info = {
            "schema_version": version,
            "arch": json.loads(meta["arch"]),
            "layers": json.loads(meta["layers"]),
            "dtypes": json.loads(meta.get("dtypes", "{}")),
            "checksum": meta.get("checksum"),
            "user": json.loads(meta.get("user", "{}")),
            "sparse_indices": json.loads(meta.get("sparse_indices", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: corrupt lowrank_sparse metadata ({e})") from None
    aq = parse_aq(p, meta)
    if aq is not None and version < 2:
        raise ValueError(f"{p}: corrupt metadata (AQ part in a schema-version-1 file)")
    info["aq"] = aq
    return info


def file_report(path: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of a file written by :func:`lowrank_sparse.save`, by component (read from
    the header only).

    Returns:
        {"header": 8-byte length prefix + JSON header (incl. safetensors' padding),
        "float_values": floating tensors stored as such (factors, sparse values, biases,
        BN, unquantized weights), "indices": integer tensors of the pair modules (sparse
        index buffers), "aq_codes": packed AQ codes, "aq_codebooks": AQ codebooks,
        "aq_scales": AQ per-tensor scales, "other": remaining tensors (e.g. BN's
        num_batches_tracked), "total": the file size}.  The components sum to "total".
    """
    p = Path(path)
    info = read_metadata(p)
    header, data_start = read_header(p)
    codes, scales, books = aq_names(info["aq"])
    whole = "" in info["layers"]  # the model itself is a pair module
    prefixes = [f"{n}." for n in info["layers"] if n]
    out = dict.fromkeys(_PARTS, 0)
    out["header"] = data_start
    for name, ti in tensor_entries(header):
        nbytes = int(ti["data_offsets"][1]) - int(ti["data_offsets"][0])
        if name in codes:
            part = "aq_codes"
        elif name in books:
            part = "aq_codebooks"
        elif name in scales:
            part = "aq_scales"
        elif ti["dtype"] in FLOAT_DTYPES:
            part = "float_values"
        elif whole or any(name.startswith(pre) for pre in prefixes):
            part = "indices"
        else:
            part = "other"
        out[part] += nbytes
    out["total"] = p.stat().st_size
    return out
