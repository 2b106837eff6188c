"""``lowrank-sparse export``: a saved model as an ONNX file (optionally checked in ONNX
Runtime against the torch model)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .args import int_at_least, positive_int
from .output import CLIError, emit, log, read_saved
from .sources import input_shape

__all__ = ["register", "run", "parse_shape"]


def parse_shape(text: str) -> tuple[int, ...]:
    """argparse type: one input's shape without the batch axis, e.g. ``3,224,224``."""
    try:
        dims = tuple(int(t) for t in text.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (C,H,W), got {text!r}")
    return dims


def register(sub: Any) -> None:
    """Add the ``export`` subparser to ``sub`` (argparse's subparsers action)."""
    from ..export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    e = sub.add_parser("export", help="write a saved model as an ONNX file")
    e.add_argument("path", help=".safetensors file written by lowrank_sparse.save / compress")
    e.add_argument("-o", "--output", required=True, help="the .onnx file to write (replaced atomically)")
    e.add_argument("--batch", type=positive_int, default=1,
                   help="batch size of the example input the model is traced on (the batch axis stays dynamic)")
    e.add_argument("--input-shape", type=parse_shape,
                   help="one input's shape without the batch axis (C,H,W); default: from the file's data set")
    e.add_argument("--opset", type=int_at_least(MIN_OPSET), default=DEFAULT_OPSET, help=f"ONNX opset (<= {MAX_OPSET})")
    e.add_argument("--check", action="store_true", help="run the file in ONNX Runtime and compare with torch")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run)


def _shape_of(args: argparse.Namespace) -> tuple[int, ...]:
    """--input-shape, else the input of the data set the file records."""
    if args.input_shape is not None:
        return args.input_shape
    from .. import io as _io

    dataset = _io.read_metadata(Path(args.path)).get("user", {}).get("dataset")
    if dataset is None:
        raise CLIError(f"{args.path} does not say which data set it was trained on: pass --input-shape C,H,W")
    return input_shape(dataset)


def _check_output(output: str) -> Path:
    """The output path, or a CLIError when it cannot be written."""
    out = Path(output)
    if out.is_dir():
        raise CLIError(f"{output}: is a folder, not a file name")
    folder = out.parent
    if not folder.is_dir():
        raise CLIError(f"{output}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CLIError(f"{output}: not writable")
    return out


def run(args: argparse.Namespace) -> int:
    """Load the file, export it, optionally check it; print text or JSON."""
    import torch

    from .. import io as _io
    from ..export import compare_with_torch, export_onnx

    out = _check_output(args.output)
    model = read_saved(args.path, _io.load)
    shape = _shape_of(args)
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
    log(args, f"exporting {args.path} on input ({args.batch}, {', '.join(map(str, shape))}) ...")
    try:
        export_onnx(model, x, out, opset=args.opset)
    except PermissionError:
        raise CLIError(f"{args.output}: not writable") from None
    except RuntimeError as e:
        raise CLIError(f"the model cannot be exported on input {tuple(x.shape)}: {str(e).splitlines()[0]}") from None
    result: dict[str, Any] = {"file": str(out), "file_bytes": out.stat().st_size, "input_shape": [args.batch, *shape],
                              "opset": args.opset}
    if args.check:
        result["max_relative_error"] = compare_with_torch(out, model, x)
    text = f"wrote {out} ({result['file_bytes']:,d} bytes, opset {args.opset}, input {tuple(x.shape)}, batch axis dynamic)"
    if args.check:
        text += f"\nONNX Runtime vs torch: max relative error {result['max_relative_error']:.2e}"
    emit(args, result, text)
    return 0
