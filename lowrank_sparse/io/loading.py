"""load(): rebuild a model saved by :func:`lowrank_sparse.save` (see :mod:`lowrank_sparse.io`)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..quant.pack import load_aq_state
from .aq import aq_names, check_aq_tensors
from .header import digest
from .indices import unpack_sparse_indices
from .layers import rebuild_pairs
from .metadata import read_metadata

__all__ = ["load"]


def _read_tensors(p: Path, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The file's tensors, checked (AQ part, checksum), cast back to their original
    dtypes and with the sparse indices decoded into their buffers."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{p}: cannot read tensors ({e})") from None
    if info["aq"] is not None:
        check_aq_tensors(p, info["aq"], tensors)
    if info["checksum"] is not None and digest(tensors) != info["checksum"]:
        raise ValueError(f"{p}: checksum mismatch, the tensor data is corrupt")
    for name, dt in info["dtypes"].items():
        if name in tensors:
            tensors[name] = tensors[name].to(getattr(torch, dt))
    if info["schema_version"] >= 3:
        unpack_sparse_indices(p, info["sparse_indices"], info["layers"], tensors)
    elif info["sparse_indices"]:
        raise ValueError(f"{p}: corrupt metadata (packed sparse indices in a schema-version-{info['schema_version']} file)")
    return tensors


def _split_aq(p: Path, aq: dict[str, Any] | None, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Take the packed AQ tensors out of ``tensors`` and put zero placeholders of the
    quantized parameters in (the pairs are built with them; the AQ reconstructions are
    attached on top afterwards)."""
    codes, scales, books = aq_names(aq)
    aq_tensors = {k: tensors.pop(k) for k in codes | scales | books}
    for e in aq["entries"] if aq is not None else []:
        if e["param"] in tensors:
            raise ValueError(f"{p}: corrupt file ({e['param']!r} is stored both plain and AQ-quantized)")
        tensors[e["param"]] = torch.zeros(e["shape"], dtype=getattr(torch, e["dtype"]))
    return aq_tensors


def _skeleton(p: Path, model: nn.Module | None, arch: dict[str, Any] | None) -> nn.Module:
    """A deep copy of ``model``, or the file's architecture built by ``models.build``."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        return copy.deepcopy(model)
    if arch is None:
        raise ValueError(f"{p}: the file records no architecture; pass model= (a skeleton of the network)")
    from .. import models

    build = getattr(models, "build", None)
    if build is None:
        raise ValueError("lowrank_sparse.models.build is not available to rebuild the architecture; pass model=")
    try:
        return build(arch["name"], **arch["kwargs"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: cannot build the recorded architecture {arch['name']!r}: {e}") from None


def load(path: str | os.PathLike[str], model: nn.Module | None = None, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`lowrank_sparse.save` (schema version 1, 2 or 3).

    Args:
        path: the file.
        model: optional skeleton (the original, uncompressed architecture); a deep copy is
            filled, the argument is not modified.  Without it the file's ``arch`` is built
            with ``lowrank_sparse.models.build(name, **kwargs)``.
        device: where the tensors are loaded.

    Returns:
        The model in eval mode with the pair modules in place and the saved state loaded.
        For a file of an AQ-quantized model, the quantized parameters are AQ
        reconstructions again (codes fixed, codebooks trainable and shared as saved, in the
        dtype the model had), exactly as :func:`lowrank_sparse.quant.quantize_model` left
        them: ready for :func:`lowrank_sparse.quant.fine_tune_codebooks` or
        :func:`lowrank_sparse.quant.bake`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: corrupt / truncated / not-safetensors / wrong schema version file,
            missing or malformed AQ tensors (the message names the tensor), a checksum
            mismatch, or a state that does not fit the skeleton.
    """
    p = Path(path)
    info = read_metadata(p)
    tensors = _read_tensors(p, info)
    aq = info["aq"]
    aq_tensors = _split_aq(p, aq, tensors)
    net = rebuild_pairs(p, _skeleton(p, model, info["arch"]), info["layers"], tensors)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{p}: the saved state does not fit the model: {e}") from None
    if aq is not None:
        try:
            load_aq_state(net, aq_tensors, aq["raw"], parametrize=True)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{p}: cannot restore the AQ-quantized parameters: {e}") from None
    return net.to(device).eval()
