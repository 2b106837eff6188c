"""export_onnx(): a (compressed) model as an ONNX file, written atomically.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``):
it needs only the ``onnx`` package and works offline with torch 2.3 .. 2.13 (the
torch.export-based exporter also needs ``onnxscript``).  The model is exported through
:func:`~lowrank_sparse.export.forms.export_copy` (the sparse parts in forms ONNX can
express), without constant folding, so that the file stores every layer in its compact
form (factors, sparse values, int32 indices) and never the dense (m, n) weight of a
layer whose compact form is smaller.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io.atomic import atomic_write
from .forms import export_copy

__all__ = ["export_onnx", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "INPUT_NAME", "OUTPUT_NAME"]

#: ONNX opset written by default, and the range accepted (ScatterND / Einsum need >= 13;
#: 20 is the highest the TorchScript-based exporter writes)
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 20
#: names of the graph's input and output
INPUT_NAME, OUTPUT_NAME = "input", "output"


def _check_args(model: nn.Module, example_input: Tensor, path: str | os.PathLike[str], opset: int) -> Path:
    """The output path, after the checks (TypeError / ValueError / FileNotFoundError
    naming the argument)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    if not example_input.is_floating_point() or example_input.dim() < 1:
        raise ValueError(f"example_input must be a floating-point tensor with a batch axis, got {example_input.dtype} "
                         f"of shape {tuple(example_input.shape)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"path {p} is a folder, not a file name")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"path {p}: the folder {p.parent} does not exist")
    return p


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install 'lowrank_sparse[export]'") from None


def onnx_bytes(model: nn.Module, example_input: Tensor, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True) -> bytes:
    """The serialized ONNX model (a checked ``ModelProto``) of ``model`` on inputs shaped
    like ``example_input``; axis 0 is a dynamic ``batch`` axis unless ``dynamic_batch``
    is False.  ``model`` is not modified."""
    import onnx

    twin = export_copy(model)
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript-based exporter announces its deprecation; the tracer warns
        # about Python ints taken from shapes (the batch axis is kept dynamic above)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        # the exporter's own note that it cannot fold a reversed Slice (reflect padding)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            twin, (example_input.detach(),), buf, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
            do_constant_folding=False,
        )  # fmt: skip
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def export_onnx(
    model: nn.Module,
    example_input: Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` (compressed or not) as an ONNX file.

    Args:
        model: the network (its pair modules and compact sparse parts are exported in an
            exact ONNX form, see :mod:`lowrank_sparse.export.forms`); not modified.
        example_input: (B, ...) float input the model is traced on (its shape fixes every
            axis but the batch axis).
        path: the .onnx file; written atomically (a temporary file in the same folder,
            renamed onto ``path``: an error midway leaves an existing file as it was).
        opset: ONNX opset version, in [13, 20].
        dynamic_batch: keep axis 0 of the input and the output dynamic ("batch").

    Returns:
        ``path`` as a Path.  The graph's input is named ``"input"``, its output
        ``"output"``.

    Raises:
        TypeError: ``model`` is not an nn.Module or ``example_input`` not a tensor.
        ValueError: a bad opset, an integer / 0-d input, ``path`` a folder.
        FileNotFoundError: the folder of ``path`` does not exist.
        ImportError: the ``onnx`` package is not installed.
    """
    p = _check_args(model, example_input, path, opset)
    _require_onnx()
    data = onnx_bytes(model, example_input, opset, dynamic_batch)
    with atomic_write(p) as f:
        f.write(data)
    return p
