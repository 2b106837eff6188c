"""lowrank_sparse: compress trained PyTorch networks as low-rank + structured-sparse layers.

Each layer's weight W (m, n) becomes L + S, L = U @ V of rank r and S structured-sparse,
fitted by an activation-aware ADMM (C++ core over SciPy's BLAS/LAPACK) so that the
layer's output after its activation stays close to the original on calibration data.

Public names::

    decompose(W, rank, density, ...)            -> Decomposition (U, V, S, info)
    compress(model, calibration_data, target=Budget(params=0.25)) -> (new_model, report)
    Budget(params=..., macs=...)  (fractions of the whole model; MACs = multiply-accumulates)
    save(model, path) / load(path)              safetensors, no pickle
    export_onnx(model, example_input, path)     ONNX file (needs the "export" extra)
    LowRankSparseLinear, LowRankSparseConv2d    the module pair
    SolverConfig, CalibrationConfig             settings of the solves / the calibration pass
    LowRankSparseConfig, RankOnlyConfig, SparseOnlyConfig   one config per method:
        compress(model, data, config=RankOnlyConfig(rank=0.25), calibration=CalibrationConfig(...))
    WandaConfig, SparseGPTConfig, SVDLLMConfig, OATSConfig   the peer methods
        (method="wanda" | "sparsegpt" | "svd_llm" | "oats")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "decompose": ("lowrank_sparse.decomposition", "decompose"),
    "Decomposition": ("lowrank_sparse.solve.result", "Decomposition"),
    "SolveInfo": ("lowrank_sparse.solve.result", "SolveInfo"),
    "Structure": ("lowrank_sparse.structure", "Structure"),
    "parse_structure": ("lowrank_sparse.structure", "parse_structure"),
    "Budget": ("lowrank_sparse.budget", "Budget"),
    "save": ("lowrank_sparse.io", "save"),
    "load": ("lowrank_sparse.io", "load"),
    "LowRankSparseLinear": ("lowrank_sparse.nn", "LowRankSparseLinear"),
    "LowRankSparseConv2d": ("lowrank_sparse.nn", "LowRankSparseConv2d"),
    "SolverConfig": ("lowrank_sparse.solve.config", "SolverConfig"),
    "CalibrationConfig": ("lowrank_sparse.calibrate", "CalibrationConfig"),
    "LowRankSparseConfig": ("lowrank_sparse.compress", "LowRankSparseConfig"),
    "RankOnlyConfig": ("lowrank_sparse.compress", "RankOnlyConfig"),
    "SparseOnlyConfig": ("lowrank_sparse.compress", "SparseOnlyConfig"),
    "WandaConfig": ("lowrank_sparse.compress", "WandaConfig"),
    "SparseGPTConfig": ("lowrank_sparse.compress", "SparseGPTConfig"),
    "SVDLLMConfig": ("lowrank_sparse.compress", "SVDLLMConfig"),
    "OATSConfig": ("lowrank_sparse.compress", "OATSConfig"),
    "export_onnx": ("lowrank_sparse.export", "export_onnx"),
}

# compress() lives in the submodule of the same name.  Importing it here binds the
# package attribute to the function once and for all; left lazy, any later
# `import lowrank_sparse.compress` would rebind `lowrank_sparse.compress` to the module.
from .compress import compress  # noqa: E402

__all__ = sorted([*_LAZY, "compress"]) + ["__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import lowrank_sparse` stays fast and does not load
    # the C++ core, matplotlib or the models until they are needed.
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lowrank_sparse' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
