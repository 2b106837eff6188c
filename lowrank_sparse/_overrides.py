"""Settings dataclasses with keyword shortcuts: the one implementation of "a config
object, with the keywords that were given overriding its fields" shared by
SolverConfig, CalibrationConfig and the method configs."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Mapping, Optional, TypeVar

__all__ = ["field_names", "overridden", "resolve_config"]

C = TypeVar("C")


def field_names(config_cls: type) -> tuple[str, ...]:
    """Field names of a dataclass, in declaration order (ClassVars excluded)."""
    return tuple(f.name for f in fields(config_cls))


def overridden(config: C, overrides: Mapping[str, Any], what: str) -> C:
    """A copy of ``config`` with ``overrides`` applied as they are.

    Raises:
        TypeError: a name that is not a field of the config (so a misspelt keyword is
            never silently ignored); ``what`` names the kind of option in the message.
    """
    known = field_names(type(config))
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise TypeError(f"unknown {what} option(s) {unknown}; known: {list(known)}")
    return replace(config, **overrides) if overrides else config


def resolve_config(config: Optional[C], config_cls: type, overrides: Mapping[str, Any], argument: str,
                   what: str) -> C:
    """``config`` (default ``config_cls()``) with the shortcuts that are not None
    applied (None means "not given").

    Raises:
        TypeError: ``config`` is not a ``config_cls`` (the message names ``argument``),
            or an unknown option name.
    """
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"{argument} must be a lowrank_sparse.{config_cls.__name__}, got {type(config).__name__}")
    base = config if config is not None else config_cls()
    return overridden(base, {k: v for k, v in overrides.items() if v is not None}, what)
