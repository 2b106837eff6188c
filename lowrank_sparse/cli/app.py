"""The ``lowrank-sparse`` parser and :func:`main`: dispatch to the subcommand and turn
user errors into one line on stderr with exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .._allocator import keep_freed_memory
from . import compress, demo, evaluate, export, report
from .args import Parser
from .output import CLIError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with the five subcommands, each from its own module."""
    p = Parser(prog="lowrank-sparse", description="Compress trained PyTorch networks as low-rank + structured-sparse layers.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (compress, evaluate, report, demo, export):
        command.register(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (argparse itself exits with 2 on malformed arguments, 0 after ``--help``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # steady timings: freed activation buffers stay in the heap
    try:
        return int(args.func(args))
    except CLIError as e:
        print(f"lowrank-sparse {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"lowrank-sparse {args.command}: error: {first}", file=sys.stderr)
        return 2
