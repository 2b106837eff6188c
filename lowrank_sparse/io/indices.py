"""Glue between a model's sparse parts and the packed index tensors of a file (schema
version 3): the index buffers of every pair module's sparse part are replaced by the
uint8 tensors of :func:`lowrank_sparse.nn.sparse_index.pack_index_state` on save, and
decoded back on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn._parts import PairBase
from ..nn.sparse_index import pack_index_state, unpack_index_state

__all__ = ["sparse_parts", "pack_sparse_indices", "unpack_sparse_indices"]


def sparse_parts(model: nn.Module) -> dict[str, Any]:
    """{qualified name: sparse part} of every pair module's sparse part."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, PairBase) and getattr(mod, "sparse", None) is not None:
            out[f"{name}.sparse" if name else "sparse"] = mod.sparse
    return out


def pack_sparse_indices(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Replace the index buffers of every sparse part in ``tensors`` (a state dict, changed
    in place) by their packed form; return the per-part metadata (``sparse_indices``).

    Raises:
        ValueError: a packed tensor name collides with a state entry.
    """
    meta: dict[str, Any] = {}
    for qual, sp in sparse_parts(model).items():
        packed, info = pack_index_state(sp)
        for buf in sp.index_state():
            tensors.pop(f"{qual}.{buf}", None)
        for local, t in packed.items():
            key = f"{qual}.{local}"
            if key in tensors:
                raise ValueError(f"state entry {key!r} collides with the name of a packed index tensor")
            tensors[key] = t
        meta[qual] = {"tensors": sorted(packed), **info}
    return meta


def _part_config(p: Path, qual: str, info: Any, layers: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """(sparse config of the pair that owns ``qual``, packed tensor names)."""
    names = info.get("tensors") if isinstance(info, dict) else None
    pair = qual[: -len(".sparse")] if qual.endswith(".sparse") else ("" if qual == "sparse" else None)
    config = (layers.get(pair) or {}).get("sparse") if pair is not None else None
    if not isinstance(config, dict) or not isinstance(names, list):
        raise ValueError(f"{p}: corrupt metadata (sparse_indices entry {qual!r} has no tensor list or no "
                         "sparse layer config)")
    return config, names


def unpack_sparse_indices(p: Path, meta: Any, layers: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`pack_sparse_indices` on the tensors read from ``p`` (in place);
    ``layers`` = the file's layer configs (they hold each sparse part's config).

    Raises:
        ValueError (naming the file): corrupt metadata, a missing packed tensor, or
            packed indices that do not decode.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"{p}: corrupt metadata (sparse_indices must be a JSON object)")
    for qual, info in meta.items():
        config, names = _part_config(p, qual, info, layers)
        pre = f"{qual}."
        missing = [n for n in names if pre + str(n) not in tensors]
        if missing:
            raise ValueError(f"{p}: missing packed index tensor {pre + str(missing[0])!r}")
        local = {n: tensors[pre + n] for n in names}
        try:
            bufs = unpack_index_state(config, local, info)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{p}: cannot decode the packed indices of {qual!r}: {e}") from None
        for k in local:
            del tensors[pre + k]
        for k, v in bufs.items():
            tensors[pre + k] = v
