"""The AQ part of a saved file: its metadata (``aq.*`` keys) decoded and checked, the
names of its tensors, and the packed tensors checked against the metadata before load.

Packed layout (written by :func:`lowrank_sparse.quant.aq_state`): ``aq.codes.<p>`` uint8
bit-packed codes, ``aq.scale.<p>`` float32 () and ``aq.codebooks.<group>`` (M, K, d).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..codec import packed_size
from ..quant.pack import FORMAT as AQ_FORMAT
from ..quant.pack import bits_for, unpack_codes

__all__ = ["AQ_KEYS", "parse_aq", "aq_names", "check_aq_tensors"]

#: the metadata keys of the AQ part (all or none of them are present)
AQ_KEYS = ("aq.format", "aq.entries", "aq.codebook_dtype")
_INT_KEYS = ("numel", "pad", "d", "M", "K", "n_vectors")
_OUT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _load_entries(p: Path, meta: dict[str, str]) -> list[Any]:
    try:
        entries = json.loads(meta["aq.entries"])
    except (ValueError, RecursionError) as e:  # JSONDecodeError, too deeply nested
        raise ValueError(f"{p}: corrupt AQ metadata (aq.entries is not JSON: {e})") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{p}: corrupt AQ metadata (aq.entries must be a non-empty list)")
    return entries


def _check_entry(p: Path, e: Any) -> None:
    """Types and consistency of one entry (``dtype`` defaults to float32, in place)."""
    if not isinstance(e, dict) or not isinstance(e.get("param"), str) or not e["param"]:
        raise ValueError(f"{p}: corrupt AQ metadata (entry {e!r} has no parameter name)")
    name = e["param"]
    bad = [k for k in _INT_KEYS if isinstance(e.get(k), bool) or not isinstance(e.get(k), int)]
    shape = e.get("shape")
    if bad or not isinstance(e.get("group"), str) or not isinstance(shape, list):
        raise ValueError(f"{p}: corrupt AQ metadata for {name!r} (missing or non-integer {bad or ['group/shape']})")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"{p}: corrupt AQ metadata for {name!r} (shape {shape!r})")
    e.setdefault("dtype", "float32")
    numel = 1
    for s in shape:
        numel *= s
    M, K, d, n, pad = e["M"], e["K"], e["d"], e["n_vectors"], e["pad"]
    if (
        numel != e["numel"] or d < 1 or M < 1 or not 2 <= K <= 65536 or not 0 <= pad < d
        or n * d != numel + pad or e["dtype"] not in _OUT_DTYPES
    ):  # fmt: skip
        raise ValueError(
            f"{p}: corrupt AQ metadata for {name!r} (shape {shape}, numel {e['numel']}, pad {pad}, d {d}, "
            f"M {M}, K {K}, {n} vectors, dtype {e['dtype']!r} are inconsistent)"
        )


def parse_aq(p: Path, meta: dict[str, str]) -> dict[str, Any] | None:
    """Decode and check the AQ metadata of a file (None when the file has no AQ part).

    Returns:
        {"format", "codebook_dtype", "entries": [checked entries], "raw": the header
        strings of :data:`AQ_KEYS`}.

    Raises:
        ValueError (naming the file): a partial, malformed or inconsistent AQ part.
    """
    present = [k for k in AQ_KEYS if k in meta]
    if not present:
        return None
    if len(present) != 3:
        raise ValueError(f"{p}: corrupt AQ metadata (has {present}, needs aq.format, aq.entries, aq.codebook_dtype)")
    if meta["aq.format"] != AQ_FORMAT:
        raise ValueError(f"{p}: AQ format {meta['aq.format']!r} is not supported (this library reads {AQ_FORMAT!r})")
    cb = meta["aq.codebook_dtype"]
    if cb not in ("float16", "float32"):
        raise ValueError(f"{p}: corrupt AQ metadata (codebook dtype {cb!r})")
    entries = _load_entries(p, meta)
    groups: dict[str, tuple[int, int, int, str]] = {}
    params: set[str] = set()
    for e in entries:
        _check_entry(p, e)
        name = e["param"]
        if name in params:
            raise ValueError(f"{p}: corrupt AQ metadata ({name!r} listed twice)")
        params.add(name)
        sig = (e["M"], e["K"], e["d"], e["dtype"])
        if groups.setdefault(e["group"], sig) != sig:
            raise ValueError(f"{p}: corrupt AQ metadata (codebook group {e['group']!r} has entries of different M, K, d or dtype)")
    return {"format": meta["aq.format"], "codebook_dtype": cb, "entries": entries,
            "raw": {k: meta[k] for k in AQ_KEYS}}  # fmt: skip


def aq_names(aq: dict[str, Any] | None) -> tuple[set[str], set[str], set[str]]:
    """(codes, scales, codebooks) tensor names of a file's AQ part."""
    if aq is None:
        return set(), set(), set()
    codes = {f"aq.codes.{e['param']}" for e in aq["entries"]}
    scales = {f"aq.scale.{e['param']}" for e in aq["entries"]}
    books = {f"aq.codebooks.{e['group']}" for e in aq["entries"]}
    return codes, scales, books


def _check_codebook(p: Path, key: str, C: torch.Tensor | None, shape: tuple[int, int, int], dtype: torch.dtype,
                    param: str) -> None:
    if C is None:
        raise ValueError(f"{p}: missing AQ codebook tensor {key!r} (needed by {param!r})")
    if C.dtype != dtype or tuple(C.shape) != shape:
        raise ValueError(f"{p}: AQ codebook tensor {key!r} is {tuple(C.shape)} {C.dtype}, expected {shape} {dtype}")
    if not bool(torch.isfinite(C).all()):
        raise ValueError(f"{p}: AQ codebook tensor {key!r} has non-finite values")


def _check_codes(p: Path, key: str, c: torch.Tensor | None, n: int, M: int, K: int) -> None:
    if c is None:
        raise ValueError(f"{p}: missing AQ codes tensor {key!r}")
    b = bits_for(K)
    need = packed_size(n * M, b)
    if c.dtype != torch.uint8 or c.dim() != 1 or c.numel() != need:
        raise ValueError(
            f"{p}: AQ codes tensor {key!r} is {tuple(c.shape)} {c.dtype}, expected ({need},) torch.uint8 "
            f"({n} vectors x {M} codes x {b} bits)"
        )
    try:
        unpack_codes(c, n * M, K)
    except ValueError as err:
        raise ValueError(f"{p}: AQ codes tensor {key!r} is corrupt: {err}") from None


def _check_scale(p: Path, key: str, s: torch.Tensor | None) -> None:
    if s is None:
        raise ValueError(f"{p}: missing AQ scale tensor {key!r}")
    if s.dtype != torch.float32 or s.dim() != 0 or not (bool(torch.isfinite(s)) and float(s) > 0):
        raise ValueError(f"{p}: AQ scale tensor {key!r} must be a finite positive float32 scalar, got {s!r}")


def check_aq_tensors(p: Path, aq: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Presence, dtype, shape and value range of every packed AQ tensor; ValueError naming
    the file and the tensor otherwise."""
    cb_dtype = getattr(torch, aq["codebook_dtype"])
    checked: set[str] = set()
    for e in aq["entries"]:
        param, M, K, d, n = e["param"], e["M"], e["K"], e["d"], e["n_vectors"]
        key = f"aq.codebooks.{e['group']}"
        if key not in checked:
            _check_codebook(p, key, tensors.get(key), (M, K, d), cb_dtype, param)
            checked.add(key)
        _check_codes(p, f"aq.codes.{param}", tensors.get(f"aq.codes.{param}"), n, M, K)
        _check_scale(p, f"aq.scale.{param}", tensors.get(f"aq.scale.{param}"))
