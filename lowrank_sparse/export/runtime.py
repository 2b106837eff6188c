"""Running an exported file in ONNX Runtime (CPU), and comparing it with torch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["onnx_session", "run_onnx", "relative_error", "compare_with_torch"]


def onnx_session(path: str | os.PathLike[str], threads: int = 2) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with ``threads`` intra-op threads
    and one inter-op thread (all graph optimizations on, no spinning of idle threads).

    Raises:
        ImportError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("running an ONNX file needs onnxruntime: pip install 'lowrank_sparse[export]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # no busy-waiting between runs: idle ORT threads would otherwise spin on the cores
    # that torch (or anything else in the process) runs on next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: Tensor) -> Tensor:
    """The session's (first) output for the input tensor ``x`` (float32 CPU), as a tensor."""
    name = session.get_inputs()[0].name
    out = session.run(None, {name: x.detach().cpu().numpy()})[0]
    return torch.from_numpy(np.asarray(out))


def relative_error(a: Tensor, ref: Tensor) -> float:
    """max |a - ref| / max |ref| (0 when both are zero), in float64."""
    a64, r64 = a.double(), ref.double()
    scale = float(r64.abs().max()) if r64.numel() else 0.0
    diff = float((a64 - r64).abs().max()) if r64.numel() else 0.0
    return diff / scale if scale > 0 else diff


def compare_with_torch(path: str | os.PathLike[str], model: nn.Module, x: Tensor, threads: int = 2) -> float:
    """Relative error (:func:`relative_error`) of the file's output against the torch
    model's on ``x`` (run in eval mode, no grad; the model's mode is restored)."""
    was_training = model.training
    try:
        with torch.no_grad():
            ref = model.eval()(x)
    finally:
        model.train(was_training)
    return relative_error(run_onnx(onnx_session(path, threads), x), ref)
