"""Argument types (validators for argparse) and the parser class whose errors are one
line with exit status 2."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, Optional

__all__ = ["DATASETS", "Parser", "RenamedOnce", "fraction", "int_at_least", "positive_int", "nonneg_int",
           "parse_quantize", "rank_value"]

#: Data sets the subcommands accept: the 32x32-resizable image sets the built-in models
#: train on, and the ImageNet samples for the pretrained MobileNetV2.
DATASETS = ("fashion_mnist", "mnist", "digits", "imagenet_samples")

_QUANTIZE_KEYS: dict[str, Callable[[str], int]] = {"M": int, "K": int, "d": int, "beam": int, "iters": int, "shared": int}


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class RenamedOnce(argparse.Action):
    """Store an option given at most once, under its name or an old name kept as a
    deprecated alias (``--flops`` for ``--macs``): the alias prints a one-line warning on
    stderr and stores the same value.  Register both with the same ``dest``; the first
    option string of the current name's ``add_argument`` call is the one the warning names."""

    #: deprecated option string -> the current one
    ALIASES = {"--flops": "--macs"}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        new = self.ALIASES.get(option_string or "")
        if new is not None:
            print(f"warning: {option_string} is deprecated; use {new} (the same value)", file=sys.stderr, flush=True)
        if getattr(namespace, self.dest, None) is not None:
            raise argparse.ArgumentError(self, "given twice (--flops is the deprecated name of --macs)")
        setattr(namespace, self.dest, values)


def fraction(text: str) -> float:
    """argparse type: a finite number in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not (0.0 < v <= 1.0) or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return v


def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``lo``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return v

    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def parse_quantize(text: str) -> dict[str, Any]:
    """Parse ``aq:M=2,K=256[,d=8,beam=8,iters=..,shared=1]`` into AQConfig keyword
    arguments (``shared`` becomes a bool); ``aq`` alone means all defaults."""
    rest = text[2:]
    if not text.startswith("aq") or (rest and not rest.startswith(":")):
        raise argparse.ArgumentTypeError(f"--quantize must look like 'aq:M=2,K=256', got {text!r}")
    out: dict[str, Any] = {}
    for part in filter(None, rest[1:].split(",")):
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in _QUANTIZE_KEYS:
            raise argparse.ArgumentTypeError(
                f"--quantize: unknown or malformed item {part!r} (allowed keys: {', '.join(_QUANTIZE_KEYS)})"
            )
        try:
            out[key] = _QUANTIZE_KEYS[key](val)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--quantize: {key} must be an integer, got {val!r}") from None
    if "shared" in out:
        out["shared"] = bool(out["shared"])
    return out


def rank_value(text: str) -> float | int:
    """--rank: a whole number >= 1 is a rank (int), anything in [0, 1) a fraction of full rank."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rank (an integer >= 1) or a fraction in [0, 1), got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a rank (an integer >= 1) or a fraction in [0, 1), got {text!r}")
    return int(v) if v >= 1 and v.is_integer() else v


#: --calibration choices -> CalibrationConfig fields (sequential, error_correction)
CALIBRATION_MODES = ("one-pass", "sequential", "corrected")


def calibration_config(args: argparse.Namespace) -> Any:
    """The CalibrationConfig of ``--sample-size`` and ``--calibration``."""
    from ..calibrate import CalibrationConfig

    return CalibrationConfig(sample_size=args.sample_size, sequential=args.calibration != "one-pass",
                             error_correction=args.calibration == "corrected")
