"""Save / load compressed models in safetensors, without pickle.

File = safetensors tensors (every entry of the model's ``state_dict``: factors, compact
sparse values and indices, untouched layers' weights, BN buffers) + string metadata:

=================  ==================================================================
key                value
=================  ==================================================================
``format``         "lowrank_sparse"
``schema_version`` "1" (:data:`SCHEMA_VERSION`)
``arch``           JSON ``{"name": ..., "kwargs": {...}}`` for ``lowrank_sparse.models.build``
                   (or "null" when unknown: load() then needs ``model=``)
``layers``         JSON ``{qualified name: module config}`` of every LowRankSparseLinear /
                   LowRankSparseConv2d (class, geometry, rank, slices, structure, sparse format)
``dtypes``         JSON ``{tensor name: original dtype}`` of tensors stored cast (``dtype=``)
``checksum``       sha256 over all tensors' bytes in name order (detects corrupted data)
``user``           JSON of the caller's remaining ``metadata``
=================  ==================================================================

load() rebuilds the skeleton (from ``arch`` or a given ``model``), swaps each recorded
pair module in at its qualified name (built from the file's tensors), and loads the
state strictly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .nn.conv import LowRankSparseConv2d
from .nn.linear import LowRankSparseLinear

__all__ = ["SCHEMA_VERSION", "save", "load", "read_metadata"]

SCHEMA_VERSION = 1
_FORMAT = "lowrank_sparse"
_PAIRS: dict[str, type[nn.Module]] = {
    "LowRankSparseLinear": LowRankSparseLinear,
    "LowRankSparseConv2d": LowRankSparseConv2d,
}
_CASTS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_ST_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                  "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def _arch_of(model: nn.Module, metadata: dict[str, Any]) -> dict[str, Any] | None:
    arch = metadata.pop("arch", None) or metadata.pop("builder", None) or getattr(model, "lrs_arch", None)
    if arch is None:
        return None
    if isinstance(arch, str):
        arch = {"name": arch, "kwargs": {}}
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise ValueError(f"metadata['arch'] must be {{'name': str, 'kwargs': dict}}, got {arch!r}")
    arch = {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))}
    try:
        json.dumps(arch)
    except TypeError as e:
        raise ValueError(f"builder kwargs must be JSON-serialisable: {e}") from None
    return arch


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None, *, dtype: str | torch.dtype | None = None) -> None:
    """Write ``model`` (its whole state) to a safetensors file.

    Args:
        model: the (compressed) network; not modified.
        path: destination file.
        metadata: optional; key ``arch`` (or ``builder``) = {"name": builder name,
            "kwargs": {...}} (or just the name) lets :func:`load` rebuild the model with
            ``lowrank_sparse.models.build``; the rest must be JSON-serialisable and is
            returned by :func:`read_metadata` under "user".  Without an arch, the model
            attribute ``lrs_arch`` is used if present.
        dtype: store floating-point tensors as "float16" / "bfloat16" (None: as they are).
            Index tensors are never cast.  load() casts them back to the original dtype.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    meta = dict(metadata or {})
    arch = _arch_of(model, meta)
    cast: torch.dtype | None = None
    if dtype is not None:
        key = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
        if key not in _CASTS:
            raise ValueError(f"dtype must be one of {sorted(_CASTS)}, got {dtype!r}")
        cast = _CASTS[key]
    layers = {name: mod.config() for name, mod in model.named_modules() if isinstance(mod, tuple(_PAIRS.values()))}
    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        t = t.detach().to("cpu")
        if cast is not None and t.is_floating_point() and t.dtype != cast:
            dtypes[name] = str(t.dtype).replace("torch.", "")
            t = t.to(cast)
        tensors[name] = t.contiguous().clone()  # no shared storage (tied weights)
    try:
        user = json.dumps(meta)
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from None
    header = {
        "format": _FORMAT,
        "schema_version": str(SCHEMA_VERSION),
        "arch": json.dumps(arch),
        "layers": json.dumps(layers),
        "dtypes": json.dumps(dtypes),
        "checksum": _digest(tensors),
        "user": user,
    }
    save_file(tensors, str(path), metadata=header)


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse and validate the safetensors header; return (header, data offset)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file or truncated (header of {n} bytes, file of {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt or not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header")
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
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
    return header, 8 + n


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded header of a file written by :func:`save`: schema_version (int), arch,
    layers, dtypes, user.

    Raises:
        ValueError: not a safetensors file, truncated, not written by lowrank_sparse, or
            written with another schema version.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    header, _ = _read_header(p)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a lowrank_sparse file (safetensors metadata has no format={_FORMAT!r})")
    ver = meta.get("schema_version")
    if ver != str(SCHEMA_VERSION):
        raise ValueError(f"{p}: schema version {ver!r} is not supported (this library reads version {SCHEMA_VERSION})")
    try:
        return {
            "schema_version": int(ver),
            "arch": json.loads(meta["arch"]),
            "layers": json.loads(meta["layers"]),
            "dtypes": json.loads(meta.get("dtypes", "{}")),
            "checksum": meta.get("checksum"),
            "user": json.loads(meta.get("user", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: corrupt lowrank_sparse metadata ({e})") from None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, child) and not (child.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList))):
        raise ValueError(f"the model has no layer {name!r} to replace")
    setattr(parent, child, new)


def load(path: str | os.PathLike[str], model: nn.Module | None = None, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save`.

    Args:
        path: the file.
        model: optional skeleton (the original, uncompressed architecture); a deep copy is
            filled, the argument is not modified.  Without it the file's ``arch`` is built
            with ``lowrank_sparse.models.build(name, **kwargs)``.
        device: where the tensors are loaded.

    Returns:
        The model in eval mode with the pair modules in place and the saved state loaded.

    Raises:
        FileNotFoundError: no such file.
        ValueError: corrupt / truncated / not-safetensors / wrong schema version file, a
            checksum mismatch, or a state that does not fit the skeleton.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    info = read_metadata(p)
    try:
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{p}: cannot read tensors ({e})") from None
    if info["checksum"] is not None and _digest(tensors) != info["checksum"]:
        raise ValueError(f"{p}: checksum mismatch, the tensor data is corrupt")
    for name, dt in info["dtypes"].items():
        if name in tensors:
            tensors[name] = tensors[name].to(getattr(torch, dt))

    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        net = copy.deepcopy(model)
    else:
        arch = info["arch"]
        if arch is None:
            raise ValueError(f"{p}: the file records no architecture; pass model= (a skeleton of the network)")
        from . import models

        build = getattr(models, "build", None)
        if build is None:
            raise ValueError("lowrank_sparse.models.build is not available to rebuild the architecture; pass model=")
        net = build(arch["name"], **arch["kwargs"])
    for name, cfg in info["layers"].items():
        cls = _PAIRS.get(cfg.get("class"))
        if cls is None:
            raise ValueError(f"{p}: unknown layer class {cfg.get('class')!r} for {name!r}")
        prefix = f"{name}." if name else ""
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            mod = cls.from_config(cfg, sub)  # type: ignore[attr-defined]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{p}: cannot rebuild layer {name!r}: {e}") from None
        if name:
            _set_submodule(net, name, mod)
        else:
            net = mod
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{p}: the saved state does not fit the model: {e}") from None
    return net.to(device).eval()
