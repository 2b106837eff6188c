"""save(): a model's whole state to a safetensors file (see :mod:`lowrank_sparse.io`)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from ..quant.apply import aq_entries
from ..quant.pack import aq_state, non_aq_state_dict
from .container import write_safetensors
from .header import FORMAT, SCHEMA_VERSION, digest
from .indices import pack_sparse_indices
from .layers import pair_configs

__all__ = ["save"]

_CASTS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _arch_of(model: nn.Module, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """{"name", "kwargs"} from ``metadata["arch"]`` / ``["builder"]`` (popped) or the
    model's ``lrs_arch``; None when neither says."""
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


def _dtype_key(dtype: str | torch.dtype) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")


def _cast_of(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None:
        return None
    key = _dtype_key(dtype)
    if key not in _CASTS:
        raise ValueError(f"dtype must be one of {sorted(_CASTS)}, got {dtype!r}")
    return _CASTS[key]


def _codebook_dtype(codebook_dtype: str | torch.dtype) -> str:
    key = _dtype_key(codebook_dtype)
    if key not in ("float16", "float32"):
        raise ValueError(f"codebook_dtype must be 'float16' or 'float32', got {codebook_dtype!r}")
    return key


def _state_tensors(model: nn.Module, cast: torch.dtype | None,
                   cb_dtype: str) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """(tensors to store, {name: original dtype} of those cast, AQ metadata)."""
    if aq_entries(model)[0]:
        aq_tensors, aq_meta = aq_state(model, codebook_dtype=cb_dtype)
        state = non_aq_state_dict(model)
    else:
        aq_tensors, aq_meta = {}, {}
        state = model.state_dict(keep_vars=False)
    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        if cast is not None and t.is_floating_point() and t.dtype != cast:
            dtypes[name] = str(t.dtype).replace("torch.", "")
            t = t.to(cast)
        tensors[name] = t.contiguous().clone()  # no shared storage (tied weights)
    for name, t in aq_tensors.items():
        if name in tensors:
            raise ValueError(f"state entry {name!r} collides with the name of a packed AQ tensor; rename the module")
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    return tensors, dtypes, aq_meta


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    codebook_dtype: str | torch.dtype = "float16",
) -> None:
    """Write ``model`` (its whole state) to a safetensors file, atomically.

    The file is written to a temporary file next to ``path``, fsync'ed and renamed onto
    ``path``: an error or a kill midway leaves an existing file at ``path`` as it was.
    The same model and arguments always give the same bytes (sorted metadata keys).

    AQ-quantized parameters (a model from :func:`lowrank_sparse.quant.quantize_model`,
    possibly fine-tuned) are stored packed: codes at ceil(log2 K) bits each, codebooks once
    per group at ``codebook_dtype``, a float32 scale per tensor (see :mod:`lowrank_sparse.io`).

    Args:
        model: the (compressed, possibly AQ-quantized) network; not modified.
        path: destination file (a symbolic link is followed: its target is replaced).
        metadata: optional; key ``arch`` (or ``builder``) = {"name": builder name,
            "kwargs": {...}} (or just the name) lets :func:`load` rebuild the model with
            ``lowrank_sparse.models.build``; the rest must be JSON-serialisable and is
            returned by :func:`read_metadata` under "user".  Without an arch, the model
            attribute ``lrs_arch`` is used if present.
        dtype: store the non-AQ floating-point tensors as "float16" / "bfloat16" (None: as
            they are).  Index tensors are never cast.  load() casts them back to the
            original dtype.
        codebook_dtype: "float16" (default) or "float32" storage of AQ codebooks.  float16
            rounds the codebooks (the loaded model reconstructs its weights from the
            rounded codebooks); float32 stores them exactly (bitwise round trip of a float32
            model).  Ignored for a model without AQ parameters.

    Raises:
        TypeError: ``model`` is not an nn.Module.
        ValueError: bad ``dtype`` / ``codebook_dtype``, metadata that is not JSON, or a state
            entry whose name collides with the AQ tensor names ("aq.codes.*", ...).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    meta = dict(metadata or {})
    arch = _arch_of(model, meta)
    cast = _cast_of(dtype)
    cb_dtype = _codebook_dtype(codebook_dtype)
    layers = pair_configs(model)
    tensors, dtypes, aq_meta = _state_tensors(model, cast, cb_dtype)
    packed_meta = pack_sparse_indices(model, tensors)
    try:
        user = json.dumps(meta)
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from None
    header = {
        "format": FORMAT,
        "schema_version": str(SCHEMA_VERSION),
        "arch": json.dumps(arch),
        "layers": json.dumps(layers),
        "dtypes": json.dumps(dtypes),
        "checksum": digest(tensors),
        "user": user,
        "sparse_indices": json.dumps(packed_meta),
        **aq_meta,
    }
    write_safetensors(path, tensors, header)
