"""What every subcommand prints: text or one JSON object on stdout, progress notes on
stderr, and user errors (:class:`CLIError`) that :func:`~lowrank_sparse.cli.app.main`
turns into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

__all__ = ["CLIError", "progress_flag", "emit", "jsonable", "log", "read_saved"]


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


def read_saved(path: str | Path, reader: Callable[[Path], T]) -> T:
    """``reader(path)`` on a saved model file, with a missing file or a file the reader
    refuses (ValueError) turned into a one-line :class:`CLIError` (naming ``path`` as
    given)."""
    if not Path(path).is_file():
        raise CLIError(f"{path}: no such file")
    try:
        return reader(Path(path))
    except ValueError as e:
        raise CLIError(str(e)) from None


def progress_flag(args: argparse.Namespace) -> Optional[bool]:
    """False when bars are switched off (``--no-progress`` or ``--json``); None lets
    tqdm decide (bars only on a terminal)."""
    if getattr(args, "no_progress", False) or getattr(args, "json", False):
        return False
    return None


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print ``payload`` as indented JSON with ``--json``, else ``text``."""
    if args.json:
        print(json.dumps(payload, indent=2, default=jsonable))
    else:
        print(text)


def jsonable(x: Any) -> Any:
    """``json.dumps`` fallback: paths as strings, arrays/tensors as lists, else ``str``."""
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def log(args: argparse.Namespace, msg: str) -> None:
    """A progress note on stderr, silent with ``--json`` or ``quiet``."""
    if not args.json and not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)
