"""Compact storage of AQ-quantized models.

Codes are bit-packed: each code takes b = ceil(log2 K) bits (1 bit for K = 2, 16 bits for
K = 65536), codes laid out row-major (vector by vector, codebook by codebook), bits
least-significant first, into a uint8 array of ceil(n_codes * b / 8) bytes.  Codebooks are
stored as float16 or float32; per-tensor scales as float32.

:func:`aq_state` / :func:`load_aq_state` produce / consume a flat ``dict[str, Tensor]`` plus a
``dict[str, str]`` of metadata (JSON strings), the form safetensors stores; the model file
format (lowrank_sparse.io) embeds them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from ..codec import bit_width, pack_bits, packed_size, unpack_bits
from ..nn.sparse import CompactSparse
from .apply import AQWeight, _attach, _param_slot, aq_entries

__all__ = [
    "bits_for",
    "pack_codes",
    "unpack_codes",
    "aq_state",
    "load_aq_state",
    "storage_bytes",
    "storage_report",
    "non_aq_state_dict",
    "FORMAT",
]

#: Format tag written in the metadata under "aq.format".
FORMAT = "lowrank_sparse.aq/1"

_CB_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def bits_for(K: int) -> int:
    """Bits needed for one code of a K-entry codebook: ceil(log2 K), at least 1."""
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2 or K > 65536:
        raise ValueError(f"K must be an int in [2, 65536], got {K!r}")
    return bit_width(int(K))


def pack_codes(codes: np.ndarray | torch.Tensor, K: int) -> np.ndarray:
    """Bit-pack integer codes in [0, K) at ceil(log2 K) bits each.

    Args:
        codes: any-shape integer array, values in [0, K).
        K: codebook size (2..65536).

    Returns:
        uint8 array of ceil(codes.size * bits / 8) bytes (shape is not stored).
    """
    b = bits_for(K)
    c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if c.size and not np.issubdtype(c.dtype, np.integer):
        raise TypeError(f"codes must be integers, got dtype {c.dtype}")
    c = c.reshape(-1).astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= K):
        raise ValueError(f"codes must lie in [0, {K})")
    return pack_bits(c, b)


def unpack_codes(packed: np.ndarray | torch.Tensor, n: int, K: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the first ``n`` codes, as a (n,) uint16 array."""
    b = bits_for(K)
    p = packed.detach().cpu().numpy() if isinstance(packed, torch.Tensor) else np.asarray(packed)
    if p.dtype != np.uint8:
        raise TypeError(f"packed codes must be uint8, got {p.dtype}")
    need = packed_size(n, b)
    if p.size != need:
        raise ValueError(f"packed codes have {p.size} bytes, expected {need} for {n} codes of {b} bits")
    vals = unpack_bits(p.reshape(-1), n, b, "codes")
    if vals.size and vals.max() >= K:
        raise ValueError(f"packed codes decode to values >= K = {K}")
    return vals.astype(np.uint16)


def aq_state(
    model: nn.Module, codebook_dtype: str = "float32"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Packed AQ state of a model returned by :func:`lowrank_sparse.quant.quantize_model`.

    Args:
        model: a quantized model (its AQ parametrizations are read, nothing is changed).
        codebook_dtype: "float16" or "float32" storage of the codebooks.

    Returns:
        (tensors, metadata).  tensors: "aq.codebooks.<g>" (M, K, d) per codebook group g,
        "aq.codes.<param>" packed uint8 codes and "aq.scale.<param>" () float32 per quantized
        parameter (<param> is the parameter's dotted name in the model).  metadata:
        "aq.format" and "aq.entries" (JSON list of {param, group, shape, numel, pad, d, M, K,
        n_vectors}).
    """
    if codebook_dtype not in _CB_DTYPES:
        raise ValueError(f"codebook_dtype must be one of {sorted(_CB_DTYPES)}, got {codebook_dtype!r}")
    entries, groups = aq_entries(model)
    if not entries:
        raise ValueError("model has no AQ-quantized parameters (use quantize_model first)")
    tensors: dict[str, torch.Tensor] = {}
    meta_entries = []
    done_groups: set[str] = set()
    for pname, q in entries:
        g = q.group
        if g not in done_groups:
            tensors[f"aq.codebooks.{g}"] = q.codebooks.detach().cpu().to(_CB_DTYPES[codebook_dtype]).contiguous()
            done_groups.add(g)
        M, K, d = q.codebooks.shape
        tensors[f"aq.codes.{pname}"] = torch.from_numpy(pack_codes(q.codes, K))
        tensors[f"aq.scale.{pname}"] = torch.tensor(q.scale, dtype=torch.float32)
        meta_entries.append(
            {
                "param": pname,
                "group": g,
                "shape": list(q.shape),
                "numel": q.numel_,
                "pad": q.pad,
                "d": d,
                "M": M,
                "K": K,
                "n_vectors": int(q.codes.shape[0]),
                "dtype": str(q.out_dtype).replace("torch.", ""),
            }
        )
    meta = {"aq.format": FORMAT, "aq.entries": json.dumps(meta_entries), "aq.codebook_dtype": codebook_dtype}
    return tensors, meta


def load_aq_state(
    model: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, str], *, parametrize: bool = False
) -> nn.Module:
    """Write the weights stored by :func:`aq_state` into ``model`` (modified in place).

    Args:
        model: a model with the same parameter names and shapes as the quantized one had
            (e.g. freshly constructed, or the float model before quantization).
        tensors, meta: as returned by :func:`aq_state` (or read back from safetensors).
        parametrize: False: the decoded values are written into the parameters (plain float
            weights).  True: AQ parametrizations are attached again (codes fixed, codebooks
            trainable, shared as they were), so :func:`fine_tune_codebooks` can continue.

    Returns:
        ``model``.
    """
    if meta.get("aq.format") != FORMAT:
        raise ValueError(f"unknown AQ format {meta.get('aq.format')!r}; expected {FORMAT!r}")
    try:
        entries = json.loads(meta["aq.entries"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError("metadata has no valid 'aq.entries'") from e
    books: dict[str, nn.Parameter] = {}
    for e in entries:
        q = _entry_weight(e, tensors, books)
        module, name = _param_slot(model, e["param"])
        current = getattr(module, name)
        if tuple(current.shape) != tuple(e["shape"]):
            raise ValueError(
                f"parameter {e['param']!r} has shape {tuple(current.shape)}, stored shape is {tuple(e['shape'])}"
            )
        if parametrize:
            _attach(module, name, q)
        else:
            with torch.no_grad():
                current.copy_(q.value())
    return model


def _entry_weight(e: dict[str, Any], tensors: dict[str, torch.Tensor], books: dict[str, nn.Parameter]) -> AQWeight:
    """The AQWeight of one ``aq.entries`` entry; its group's codebooks are made once and
    shared through ``books`` (filled here)."""
    g = e["group"]
    if g not in books:
        key = f"aq.codebooks.{g}"
        if key not in tensors:
            raise ValueError(f"missing tensor {key!r}")
        books[g] = nn.Parameter(tensors[key].detach().to(getattr(torch, e.get("dtype", "float32"))).clone())
    C = books[g]
    M, K, d = e["M"], e["K"], e["d"]
    if tuple(C.shape) != (M, K, d):
        raise ValueError(f"codebooks {g!r} have shape {tuple(C.shape)}, metadata says {(M, K, d)}")
    n = e["n_vectors"]
    codes = unpack_codes(tensors[f"aq.codes.{e['param']}"], n * M, K).reshape(n, M)
    scale = float(tensors[f"aq.scale.{e['param']}"])
    return AQWeight(C, torch.from_numpy(codes.astype(np.int64)), scale, tuple(e["shape"]), int(e["numel"]),
                    int(e["pad"]), group=g)


def non_aq_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the AQ entries (codebooks, codes): the float remainder
    (biases, normalisation, indices, unquantized weights) that a file stores beside
    :func:`aq_state`.  Keys are the model's own; quantized parameters do not appear."""
    return {
        k: v
        for k, v in model.state_dict().items()
        if not (k.startswith("aq_slots.") or ".aq_slots." in k)
    }


def storage_report(model: nn.Module, codebook_dtype: str = "float16") -> dict[str, int]:
    """Bytes of a quantized model, by part.

    Returns a dict with: "codes" (packed code bytes), "codebooks" (each shared codebook
    counted once, at ``codebook_dtype``), "scales" (4 bytes per quantized tensor),
    "indices" (index storage of the sparse parts of the lowrank_sparse pair modules in the
    packed form a saved file uses, :meth:`~lowrank_sparse.nn.sparse.CompactSparse.num_index_bytes`),
    "float" (every other parameter and buffer at its own dtype; AQ codes/codebook copies and
    sparse index buffers excluded), "quantized_float32" (what the quantized parameters take
    as float32), and "total" = codes + codebooks + scales + indices + float: the tensor bytes
    of the file :func:`lowrank_sparse.save` writes (which adds its header).
    """
    if codebook_dtype not in _CB_DTYPES:
        raise ValueError(f"codebook_dtype must be one of {sorted(_CB_DTYPES)}, got {codebook_dtype!r}")
    entries, groups = aq_entries(model)
    cb_size = 2 if codebook_dtype == "float16" else 4
    codes_b = 0
    q32 = 0
    seen_books: dict[int, int] = {}
    aq_ids: set[int] = set()
    for _, q in entries:
        M, K, _d = q.codebooks.shape
        codes_b += packed_size(q.codes.numel(), bits_for(K))
        q32 += 4 * q.numel_
        seen_books[id(q.codebooks)] = q.codebooks.numel() * cb_size
        aq_ids.update({id(q.codebooks), id(q.codes)})
    idx_b = 0
    for mod in model.modules():
        if isinstance(mod, CompactSparse):
            idx_b += mod.num_index_bytes(packed=True)
            aq_ids.update(id(t) for t in mod.index_state().values())
    float_b = 0
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in aq_ids or id(t) in seen:
            continue
        seen.add(id(t))
        float_b += t.numel() * t.element_size()
    out = {
        "codes": codes_b,
        "codebooks": sum(seen_books.values()),
        "scales": 4 * len(entries),
        "indices": idx_b,
        "float": float_b,
        "quantized_float32": q32,
    }
    out["total"] = out["codes"] + out["codebooks"] + out["scales"] + out["indices"] + out["float"]
    return out


def storage_bytes(model: nn.Module, codebook_dtype: str = "float16") -> int:
    """Total packed size of a quantized model in bytes (see :func:`storage_report`)."""
    return storage_report(model, codebook_dtype)["total"]
