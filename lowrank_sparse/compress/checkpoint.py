"""A resumable compress(): every finished layer's decomposition in a folder.

Layout of ``checkpoint_dir``::

    manifest.json            what run the folder belongs to (see :func:`run_manifest`)
    layers/<name>.safetensors  one finished layer: U, V, S (as solved, BatchNorm scale
                             unfolded), with its size, structure, solver record and
                             solve seconds as metadata

Both are written atomically (:mod:`lowrank_sparse.io.atomic`), so a run killed at any
point leaves only whole files.  A rerun with the same folder and the same inputs loads
the finished layers instead of solving them; as every other step of compress() is
deterministic, its result is bitwise equal to an uninterrupted run.  A folder whose
manifest names a different model (fingerprint of its parameters and buffers), target,
allocation, method config, structure, calibration settings, layer selection or library
version is refused with a ValueError naming the fields that differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

__all__ = ["FORMAT", "Checkpoint", "model_fingerprint", "run_manifest"]

#: the manifest's "format" value
FORMAT = "lowrank_sparse.checkpoint/1"
#: solver / calibration fields that do not change results (left out of the manifest)
_NEUTRAL = {"progress", "threads", "device", "chunk_rows"}


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) over every ``state_dict`` entry's name, dtype, shape and bytes, in
    name order: equal for models with bitwise equal parameters and buffers."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _plain(obj: Any) -> Any:
    """JSON-ready form of configs: dataclasses as dicts (neutral fields dropped)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in _NEUTRAL}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def run_manifest(model: nn.Module, *, target: Any, allocation: Optional[str], method: str, config: Any,
                 structure: str, calibration: Any, layers: list[str]) -> dict[str, Any]:
    """The manifest of one compress() run (every value JSON-ready)."""
    from .. import __version__

    return {
        "format": FORMAT,
        "library_version": __version__,
        "model_fingerprint": model_fingerprint(model),
        "target": None if target is None else target.as_dict(),
        "allocation": allocation if target is not None else None,
        "method": method,
        "config": _plain(config),
        "structure": structure,
        "calibration": _plain(calibration),
        "layers": list(layers),
    }


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)


class Checkpoint:
    """The checkpoint folder of one run: :meth:`open` checks or writes its manifest,
    :meth:`save` / :meth:`load` one layer's decomposition."""

    def __init__(self, folder: Union[str, os.PathLike[str]], manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.manifest = json.loads(json.dumps(manifest))  # as it reads back from disk

    @classmethod
    def open(cls, folder: Union[str, os.PathLike[str]], manifest: dict[str, Any]) -> "Checkpoint":
        """The folder for this run: created with ``manifest`` if new, else its recorded
        manifest checked against ``manifest``.

        Raises:
            ValueError: the folder belongs to another run (the message names the
                differing fields), or its manifest is not a checkpoint manifest.
        """
        ck = cls(folder, manifest)
        path = ck.folder / "manifest.json"
        if path.exists():
            ck._check(path)
        else:
            from ..io.atomic import atomic_write

            (ck.folder / "layers").mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                f.write(json.dumps(ck.manifest, indent=1, sort_keys=True).encode())
        (ck.folder / "layers").mkdir(parents=True, exist_ok=True)
        return ck

    def _check(self, path: Path) -> None:
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"checkpoint {self.folder}: unreadable manifest.json ({err})") from None
        if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
            raise ValueError(f"checkpoint {self.folder}: manifest.json is not a {FORMAT} manifest")
        bad = sorted(k for k in set(recorded) | set(self.manifest) if recorded.get(k) != self.manifest.get(k))
        if bad:
            detail = "; ".join(f"{k}: recorded {_short(recorded.get(k))}, this run {_short(self.manifest.get(k))}"
                               for k in bad)
            raise ValueError(f"checkpoint {self.folder} belongs to another run; mismatched fields: "
                             f"{', '.join(bad)} ({detail}); use another folder or delete this one")

    def _path(self, name: str) -> Path:
        return self.folder / "layers" / f"{name}.safetensors"

    def has(self, name: str) -> bool:
        """Whether layer ``name`` is finished in the folder."""
        return self._path(name).is_file()

    def save(self, name: str, size: tuple[int, float, int], dec: Any, seconds: float) -> None:
        """Write layer ``name``'s decomposition (torch tensors) at ``size`` = (rank,
        density, slices), atomically."""
        from ..io.container import write_safetensors

        info = json.dumps(dataclasses.asdict(dec.info), default=_json_default)
        meta = {"name": name, "size": json.dumps([int(size[0]), float(size[1]), int(size[2])]),
                "slices": str(int(dec.slices)), "structure": json.dumps(dataclasses.asdict(dec.structure)),
                "info": info, "seconds": repr(float(seconds))}
        tensors = {k: getattr(dec, k).detach().cpu() for k in ("U", "V", "S")}
        write_safetensors(self._path(name), tensors, meta)

    def load(self, name: str, size: tuple[int, float, int]) -> tuple[Any, float]:
        """(decomposition, solve seconds) of finished layer ``name``.

        Raises:
            ValueError: the file was written for another layer or size.
        """
        from safetensors import safe_open

        from ..solve.result import Decomposition, SolveInfo
        from ..structure import Structure

        path = self._path(name)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in ("U", "V", "S")}
        want = [int(size[0]), float(size[1]), int(size[2])]
        if meta.get("name") != name or json.loads(meta.get("size", "null")) != want:
            raise ValueError(f"checkpoint file {path} is not layer '{name}' at size {tuple(want)}")
        dec = Decomposition(tensors["U"], tensors["V"], tensors["S"], Structure(**json.loads(meta["structure"])),
                            SolveInfo(**json.loads(meta["info"])), slices=int(meta["slices"]))
        return dec, float(meta["seconds"])


def _short(v: Any, limit: int = 80) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= limit else s[:limit - 3] + "..."
