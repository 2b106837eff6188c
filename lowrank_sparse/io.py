"""Save / load compressed models in safetensors, without pickle.

File = safetensors tensors (every entry of the model's ``state_dict``: factors, compact
sparse values and indices, untouched layers' weights, BN buffers) + string metadata:

=================  ==================================================================
key                value
=================  ==================================================================
``format``         "lowrank_sparse"
``schema_version`` "3" (:data:`SCHEMA_VERSION`; version-1 files (no AQ part) and
                   version-2 files (sparse indices stored as plain int32/uint8 tensors) still
                   load)
``arch``           JSON ``{"name": ..., "kwargs": {...}}`` for ``lowrank_sparse.models.build``
                   (or "null" when unknown: load() then needs ``model=``)
``layers``         JSON ``{qualified name: module config}`` of every LowRankSparseLinear /
                   LowRankSparseConv2d (class, geometry, rank, slices, structure, sparse format)
``dtypes``         JSON ``{tensor name: original dtype}`` of tensors stored cast (``dtype=``)
``checksum``       sha256 over all tensors' bytes in name order (detects corrupted data)
``user``           JSON of the caller's remaining ``metadata``
``sparse_indices`` (version 3) JSON ``{qualified name of a sparse part: {"tensors": [packed
                   tensor names], codec description}}``: how its support is packed (below)
``aq.format``      (AQ-quantized models only) ``lowrank_sparse.quant.pack.FORMAT``
``aq.entries``     (AQ only) JSON list, one entry per quantized parameter: {param, group,
                   shape, numel, pad, d, M, K, n_vectors, dtype}
``aq.codebook_dtype`` (AQ only) "float16" or "float32": how the codebooks are stored
=================  ==================================================================

Tensors of an AQ-quantized model (output of :func:`lowrank_sparse.quant.quantize_model`):
each quantized parameter ``<p>`` is stored packed, never as its dense reconstruction:

* ``aq.codes.<p>``: uint8 (ceil(n_vectors * M * ceil(log2 K) / 8),), the bit-packed codes
  (:func:`lowrank_sparse.quant.pack_codes`);
* ``aq.scale.<p>``: float32 () per-tensor scale;
* ``aq.codebooks.<group>``: (M, K, d) float16 or float32, once per codebook group (shared
  codebooks are stored once);

and every other entry of the state (biases, BN buffers, unquantized weights) under its
``state_dict`` name (:func:`lowrank_sparse.quant.non_aq_state_dict`).

Sparse indices (version 3): the index buffers of every pair module's sparse part
(``rows``, ``groups``, ``channels``, ``crow_indices``, ``col_indices``, ``offsets``) are
not stored as they are; :func:`lowrank_sparse.nn.sparse.pack_index_state` replaces them
with uint8 tensors named ``<sparse part>.<...>.packed`` / ``<sparse part>.support.*``:
bit-packed at ceil(log2 n) bits, bitmaps, or Rice-coded column gaps of unstructured S,
whichever is smallest (exact; ``channels`` is derived and not stored).  load() decodes
them back into the buffers bit for bit.

load() rebuilds the skeleton (from ``arch`` or a given ``model``), swaps each recorded
pair module in at its qualified name (built from the file's tensors), loads the state
strictly and, for an AQ file, attaches the AQ reconstructions again (codes fixed,
codebooks trainable ``nn.Parameter`` s shared as they were), so the loaded model computes
the same outputs bit for bit, can be fine-tuned with
:func:`lowrank_sparse.quant.fine_tune_codebooks` or baked with
:func:`lowrank_sparse.quant.bake`.  :func:`file_report` splits the file size by component.
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

__all__ = ["SCHEMA_VERSION", "save", "load", "read_metadata", "file_report"]

SCHEMA_VERSION = 3
#: Schema versions :func:`load` reads (1: no AQ part; 2: optional AQ part; 3: packed
#: sparse indices).
READABLE_VERSIONS = (1, 2, 3)
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


def _codebook_dtype(codebook_dtype: str | torch.dtype) -> str:
    key = codebook_dtype if isinstance(codebook_dtype, str) else str(codebook_dtype).replace("torch.", "")
    if key not in ("float16", "float32"):
        raise ValueError(f"codebook_dtype must be 'float16' or 'float32', got {codebook_dtype!r}")
    return key


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    codebook_dtype: str | torch.dtype = "float16",
) -> None:
    """Write ``model`` (its whole state) to a safetensors file.

    AQ-quantized parameters (a model from :func:`lowrank_sparse.quant.quantize_model`,
    possibly fine-tuned) are stored packed: codes at ceil(log2 K) bits each, codebooks once
    per group at ``codebook_dtype``, a float32 scale per tensor (see the module docstring).

    Args:
        model: the (compressed, possibly AQ-quantized) network; not modified.
        path: destination file.
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
    from safetensors.torch import save_file

    from .quant.apply import aq_entries
    from .quant.pack import aq_state, non_aq_state_dict

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
    cb_dtype = _codebook_dtype(codebook_dtype)
    layers = {name: mod.config() for name, mod in model.named_modules() if isinstance(mod, tuple(_PAIRS.values()))}
    quantized = bool(aq_entries(model)[0])
    if quantized:
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
    packed_meta = _pack_sparse_indices(model, tensors)
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
        "sparse_indices": json.dumps(packed_meta),
        **aq_meta,
    }
    save_file(tensors, str(path), metadata=header)


def _sparse_parts(model: nn.Module) -> dict[str, Any]:
    """{qualified name: sparse part} of every recorded pair module's sparse part."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, tuple(_PAIRS.values())) and getattr(mod, "sparse", None) is not None:
            out[f"{name}.sparse" if name else "sparse"] = mod.sparse
    return out


def _pack_sparse_indices(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Replace the index buffers of every sparse part in ``tensors`` (a state dict, changed
    in place) by their packed form; return the per-part metadata."""
    from .nn.sparse_index import pack_index_state

    meta: dict[str, Any] = {}
    for qual, sp in _sparse_parts(model).items():
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


def _unpack_sparse_indices(p: Path, meta: Any, layers: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`_pack_sparse_indices` on the tensors read from ``p`` (in place);
    ``layers`` = the file's layer configs (they hold each sparse part's config)."""
    from .nn.sparse_index import unpack_index_state

    if not isinstance(meta, dict):
        raise ValueError(f"{p}: corrupt metadata (sparse_indices must be a JSON object)")
    for qual, info in meta.items():
        names = info.get("tensors") if isinstance(info, dict) else None
        pair = qual[: -len(".sparse")] if qual.endswith(".sparse") else ("" if qual == "sparse" else None)
        config = (layers.get(pair) or {}).get("sparse") if pair is not None else None
        if not isinstance(config, dict) or not isinstance(names, list):
            raise ValueError(f"{p}: corrupt metadata (sparse_indices entry {qual!r} has no tensor list or no "
                             "sparse layer config)")
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



_AQ_INT_KEYS = ("numel", "pad", "d", "M", "K", "n_vectors")
_AQ_OUT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _parse_aq(p: Path, meta: dict[str, str]) -> dict[str, Any] | None:
    """Decode and check the AQ metadata of a file (None when the file has no AQ part)."""
    from .quant.pack import FORMAT

    present = [k for k in ("aq.format", "aq.entries", "aq.codebook_dtype") if k in meta]
    if not present:
        return None
    if len(present) != 3:
        raise ValueError(f"{p}: corrupt AQ metadata (has {present}, needs aq.format, aq.entries, aq.codebook_dtype)")
    if meta["aq.format"] != FORMAT:
        raise ValueError(f"{p}: AQ format {meta['aq.format']!r} is not supported (this library reads {FORMAT!r})")
    cb = meta["aq.codebook_dtype"]
    if cb not in ("float16", "float32"):
        raise ValueError(f"{p}: corrupt AQ metadata (codebook dtype {cb!r})")
    try:
        entries = json.loads(meta["aq.entries"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: corrupt AQ metadata (aq.entries is not JSON: {e})") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{p}: corrupt AQ metadata (aq.entries must be a non-empty list)")
    groups: dict[str, tuple[int, int, int, str]] = {}
    params: set[str] = set()
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("param"), str) or not e["param"]:
            raise ValueError(f"{p}: corrupt AQ metadata (entry {e!r} has no parameter name)")
        name = e["param"]
        bad = [k for k in _AQ_INT_KEYS if isinstance(e.get(k), bool) or not isinstance(e.get(k), int)]
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
            or n * d != numel + pad or e["dtype"] not in _AQ_OUT_DTYPES
        ):  # fmt: skip
            raise ValueError(
                f"{p}: corrupt AQ metadata for {name!r} (shape {shape}, numel {e['numel']}, pad {pad}, d {d}, "
                f"M {M}, K {K}, {n} vectors, dtype {e['dtype']!r} are inconsistent)"
            )
        if name in params:
            raise ValueError(f"{p}: corrupt AQ metadata ({name!r} listed twice)")
        params.add(name)
        sig = (M, K, d, e["dtype"])
        if groups.setdefault(e["group"], sig) != sig:
            raise ValueError(f"{p}: corrupt AQ metadata (codebook group {e['group']!r} has entries of different M, K, d or dtype)")
    return {"format": meta["aq.format"], "codebook_dtype": cb, "entries": entries,
            "raw": {k: meta[k] for k in ("aq.format", "aq.entries", "aq.codebook_dtype")}}  # fmt: skip


def _aq_names(aq: dict[str, Any] | None) -> tuple[set[str], set[str], set[str]]:
    """(codes, scales, codebooks) tensor names of a file's AQ part."""
    if aq is None:
        return set(), set(), set()
    codes = {f"aq.codes.{e['param']}" for e in aq["entries"]}
    scales = {f"aq.scale.{e['param']}" for e in aq["entries"]}
    books = {f"aq.codebooks.{e['group']}" for e in aq["entries"]}
    return codes, scales, books


def _check_aq_tensors(p: Path, aq: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Presence, dtype, shape and value range of every packed AQ tensor; ValueError naming
    the file and the tensor otherwise."""
    from .quant.pack import bits_for, unpack_codes

    cb_dtype = getattr(torch, aq["codebook_dtype"])
    checked: set[str] = set()
    for e in aq["entries"]:
        param, M, K, d, n = e["param"], e["M"], e["K"], e["d"], e["n_vectors"]
        key = f"aq.codebooks.{e['group']}"
        if key not in checked:
            C = tensors.get(key)
            if C is None:
                raise ValueError(f"{p}: missing AQ codebook tensor {key!r} (needed by {param!r})")
            if C.dtype != cb_dtype or tuple(C.shape) != (M, K, d):
                raise ValueError(
                    f"{p}: AQ codebook tensor {key!r} is {tuple(C.shape)} {C.dtype}, expected {(M, K, d)} {cb_dtype}"
                )
            if not bool(torch.isfinite(C).all()):
                raise ValueError(f"{p}: AQ codebook tensor {key!r} has non-finite values")
            checked.add(key)
        key = f"aq.codes.{param}"
        c = tensors.get(key)
        if c is None:
            raise ValueError(f"{p}: missing AQ codes tensor {key!r}")
        b = bits_for(K)
        need = (n * M * b + 7) // 8
        if c.dtype != torch.uint8 or c.dim() != 1 or c.numel() != need:
            raise ValueError(
                f"{p}: AQ codes tensor {key!r} is {tuple(c.shape)} {c.dtype}, expected ({need},) torch.uint8 "
                f"({n} vectors x {M} codes x {b} bits)"
            )
        try:
            unpack_codes(c, n * M, K)
        except ValueError as err:
            raise ValueError(f"{p}: AQ codes tensor {key!r} is corrupt: {err}") from None
        key = f"aq.scale.{param}"
        s = tensors.get(key)
        if s is None:
            raise ValueError(f"{p}: missing AQ scale tensor {key!r}")
        if s.dtype != torch.float32 or s.dim() != 0 or not (bool(torch.isfinite(s)) and float(s) > 0):
            raise ValueError(f"{p}: AQ scale tensor {key!r} must be a finite positive float32 scalar, got {s!r}")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded header of a file written by :func:`save`: schema_version (int), arch,
    layers, dtypes, checksum, user, sparse_indices ({} before version 3), and aq (None, or {"format", "codebook_dtype",
    "entries": [...], "raw": the header strings}).

    Raises:
        ValueError: not a safetensors file, truncated, not written by lowrank_sparse,
            written with an unsupported schema version, or corrupt metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    header, _ = _read_header(p)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a lowrank_sparse file (safetensors metadata has no format={_FORMAT!r})")
    ver = meta.get("schema_version")
    if ver not in {str(v) for v in READABLE_VERSIONS}:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise ValueError(f"{p}: schema version {ver!r} is not supported (this library reads versions {readable})")
    try:
        info = {
            "schema_version": int(ver),
            "arch": json.loads(meta["arch"]),
            "layers": json.loads(meta["layers"]),
            "dtypes": json.loads(meta.get("dtypes", "{}")),
            "checksum": meta.get("checksum"),
            "user": json.loads(meta.get("user", "{}")),
            "sparse_indices": json.loads(meta.get("sparse_indices", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: corrupt lowrank_sparse metadata ({e})") from None
    aq = _parse_aq(p, meta)
    if aq is not None and info["schema_version"] < 2:
        raise ValueError(f"{p}: corrupt metadata (AQ part in a schema-version-1 file)")
    info["aq"] = aq
    return info


_FLOAT_ST = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def file_report(path: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of a file written by :func:`save`, by component (read from the header only).

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
    header, data_start = _read_header(p)
    codes, scales, books = _aq_names(info["aq"])
    whole = "" in info["layers"]  # the model itself is a pair module
    prefixes = [f"{n}." for n in info["layers"] if n]
    out = dict.fromkeys(("header", "float_values", "indices", "aq_codes", "aq_codebooks", "aq_scales", "other"), 0)
    out["header"] = data_start
    for name, ti in header.items():
        if name == "__metadata__":
            continue
        nbytes = int(ti["data_offsets"][1]) - int(ti["data_offsets"][0])
        if name in codes:
            part = "aq_codes"
        elif name in books:
            part = "aq_codebooks"
        elif name in scales:
            part = "aq_scales"
        elif ti["dtype"] in _FLOAT_ST:
            part = "float_values"
        elif whole or any(name.startswith(pre) for pre in prefixes):
            part = "indices"
        else:
            part = "other"
        out[part] += nbytes
    out["total"] = p.stat().st_size
    return out


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, child) and not (child.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList))):
        raise ValueError(f"the model has no layer {name!r} to replace")
    setattr(parent, child, new)



def load(path: str | os.PathLike[str], model: nn.Module | None = None, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save` (schema version 1, 2 or 3).

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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    info = read_metadata(p)
    try:
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{p}: cannot read tensors ({e})") from None
    aq = info["aq"]
    if aq is not None:
        _check_aq_tensors(p, aq, tensors)
    if info["checksum"] is not None and _digest(tensors) != info["checksum"]:
        raise ValueError(f"{p}: checksum mismatch, the tensor data is corrupt")
    for name, dt in info["dtypes"].items():
        if name in tensors:
            tensors[name] = tensors[name].to(getattr(torch, dt))
    if info["schema_version"] >= 3:
        _unpack_sparse_indices(p, info["sparse_indices"], info["layers"], tensors)
    elif info["sparse_indices"]:
        raise ValueError(f"{p}: corrupt metadata (packed sparse indices in a schema-version-{info['schema_version']} file)")
    codes, scales, books = _aq_names(aq)
    aq_tensors = {k: tensors.pop(k) for k in codes | scales | books}
    if aq is not None:
        # placeholders of the quantized parameters: the pair modules are built with them and
        # the AQ reconstructions are attached on top afterwards
        for e in aq["entries"]:
            if e["param"] in tensors:
                raise ValueError(f"{p}: corrupt file ({e['param']!r} is stored both plain and AQ-quantized)")
            tensors[e["param"]] = torch.zeros(e["shape"], dtype=getattr(torch, e["dtype"]))

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
    if aq is not None:
        from .quant.pack import load_aq_state

        try:
            load_aq_state(net, aq_tensors, aq["raw"], parametrize=True)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{p}: cannot restore the AQ-quantized parameters: {e}") from None
    return net.to(device).eval()
