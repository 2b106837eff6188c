"""CalibrationConfig: how the calibration data is run through the model.

One object shared by :func:`lowrank_sparse.calibrate.calibrate` and
:func:`lowrank_sparse.compress`; each field is also a keyword of those functions (a
shortcut that overrides the config's field when it is not None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from .._overrides import field_names as _field_names, resolve_config

__all__ = ["DEFAULT_SAMPLE_SIZE", "CalibrationConfig", "resolve_calibration"]

#: Default size of the per-layer subsample of input columns.
DEFAULT_SAMPLE_SIZE = 8192


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of the calibration pass.

    Attributes:
        sample_size: max input columns kept per layer for layers followed by a
            nonlinear activation (0: none); seeded bottom-k sample.
        batch_size: rows per batch when the calibration data is one tensor.
        sequential: (compress only) re-collect each layer's statistics from the
            partially compressed model right before fitting it.
        device: where the model runs (None: the device of its first parameter);
            compress also runs the solves there and moves the returned model there.
        seed: seeds the subsample (each layer gets its own generator).
        sample_all: keep a subsample for every layer, not only the nonlinear ones.
        max_batches: stop after this many batches (None: all).
        chunk_rows: input columns processed at once (bounds the memory of a conv's
            unfolded patches).
        gated_mlp: how the gate_proj / up_proj of a gated MLP are fitted: "product"
            (on the error each causes in ``act(gate x) * (up x)``, see
            :mod:`~lowrank_sparse.calibrate.gated`) or "linear" (on its own input Gram,
            as any linear layer).
        error_correction: (needs ``sequential``) fit each layer to the dense model's
            output on the compressed model's input (:mod:`~lowrank_sparse.calibrate.correct`)
            instead of to its own output on that input, so that each layer also
            corrects the error of the layers before it; costs one more pass of the
            dense and the compressed model per layer, and a dense copy of the model.

    Raises:
        ValueError: ``sample_size < 0``, ``batch_size < 1`` or ``chunk_rows < 1``.
    """

    sample_size: int = DEFAULT_SAMPLE_SIZE
    batch_size: int = 128
    sequential: bool = False
    device: Optional[Union[str, torch.device]] = None
    seed: int = 0
    sample_all: bool = False
    max_batches: Optional[int] = None
    chunk_rows: int = 16384
    gated_mlp: str = "product"
    error_correction: bool = False

    def __post_init__(self) -> None:
        if self.sample_size < 0:
            raise ValueError(f"sample_size must be >= 0, got {self.sample_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.gated_mlp not in ("product", "linear"):
            raise ValueError(f"gated_mlp must be 'product' or 'linear', got {self.gated_mlp!r}")
        if self.error_correction and not self.sequential:
            raise ValueError("error_correction=True needs sequential=True (each layer is fitted on the "
                             "compressed model's inputs, which exist only under sequential calibration)")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return _field_names(cls)


def resolve_calibration(config: Optional[CalibrationConfig], overrides: dict[str, Any]) -> CalibrationConfig:
    """``config`` (default CalibrationConfig()) with the keyword shortcuts that are not
    None applied (None means "not given").

    Raises:
        TypeError: ``config`` is not a CalibrationConfig, or an unknown field name.
    """
    return resolve_config(config, CalibrationConfig, overrides, "calibration", "calibration")
