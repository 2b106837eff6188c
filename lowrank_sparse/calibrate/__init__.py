"""Calibration: per-layer input statistics, activation detection and BatchNorm folding.

:func:`calibrate` runs a model over calibration data once, with forward hooks, and
returns a :class:`Calibration` with one :class:`LayerStats` per compressible layer.

Modules, one job each:

* :mod:`.config`: :class:`CalibrationConfig`, the settings of the pass;
* :mod:`.batches`: the forward calls of tensors, tuples, dicts, DataLoaders
  (:func:`iter_model_batches`, with the ``attention_mask`` token mask) and their input
  tensors (:func:`iter_batches`);
* :mod:`.layers`: which layers are compressible (:func:`find_layers`) and which ones
  ``keep_first_last`` protects (:func:`first_last_protected`);
* :mod:`.capture`: a layer's inputs as a matrix (:func:`layer_input_matrix`);
* :mod:`.activation` / :mod:`.detect`: the activation after each layer (torch.fx, or
  hooks at run time for models fx cannot trace);
* :mod:`.fold`: BatchNorm folding, for both the allocator and the solves;
* :mod:`.stats`: :class:`LayerStats`, the streaming Gram / subsample collector and
  :func:`stats_error`;
* :mod:`.run`: :func:`calibrate` itself.
"""

from .activation import NONLINEAR, ActivationInfo
from .batches import CalibrationData, ModelBatch, iter_batches, iter_model_batches
from ..nn.geometry import conv_padding
from .capture import layer_input_matrix, token_rows
from .config import DEFAULT_SAMPLE_SIZE, CalibrationConfig, resolve_calibration
from .detect import detect_activations
from .fold import FoldedProblem, unfold_decomposition
from .layers import find_layers, first_last_protected, is_conv1d, weight_matrix
from .run import calibrate
from .stats import Calibration, LayerStats, folded_problem, stats_error

__all__ = [
    "ActivationInfo",
    "Calibration",
    "CalibrationConfig",
    "CalibrationData",
    "DEFAULT_SAMPLE_SIZE",
    "FoldedProblem",
    "LayerStats",
    "ModelBatch",
    "NONLINEAR",
    "calibrate",
    "conv_padding",
    "detect_activations",
    "find_layers",
    "first_last_protected",
    "folded_problem",
    "is_conv1d",
    "iter_batches",
    "iter_model_batches",
    "layer_input_matrix",
    "resolve_calibration",
    "stats_error",
    "token_rows",
    "unfold_decomposition",
    "weight_matrix",
]
