"""Deployment of compressed models: ONNX export and running the file in ONNX Runtime.

Modules: :mod:`.onnx` (:func:`export_onnx`, the TorchScript-based exporter, atomic
write), :mod:`.forms` (export forms of the compact sparse parts, swapped into a copy of
the model during export only), :mod:`.runtime` (ONNX Runtime sessions, comparison with
torch).  Needs the ``export`` extra (``onnx``, ``onnxruntime``).
"""

from __future__ import annotations

from .forms import export_copy, export_form
from .onnx import DEFAULT_OPSET, export_onnx
from .runtime import compare_with_torch, onnx_session, relative_error, run_onnx

__all__ = ["export_onnx", "DEFAULT_OPSET", "export_copy", "export_form", "onnx_session", "run_onnx",
           "relative_error", "compare_with_torch"]
