"""Old public names kept as deprecated aliases of renamed ones.

The library counts multiply-accumulates (MACs); names that once said "flops" for
that count (``Budget(flops=...)``, ``model_flops``, ``report.flops_after``, ...) now
say "macs".  The old names still work, mean exactly the same number, and emit a
:class:`DeprecationWarning` that names the replacement.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, Mapping, TypeVar

__all__ = ["renamed", "renamed_function", "warn_renamed"]

T = TypeVar("T", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """DeprecationWarning "``old`` is deprecated; use ``new`` (the same value)", pointing
    at the caller ``stacklevel - 1`` frames up (default: the caller of the alias)."""
    warnings.warn(f"{old} is deprecated; use {new} (the same value)", DeprecationWarning, stacklevel=stacklevel)


def renamed_function(new: F, old: str) -> F:
    """A function named ``old`` that warns, then calls ``new`` with the same arguments."""

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(f"{old}()", f"{new.__name__}()")
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of :func:`{new.__name__}` (the same value)."
    return alias  # type: ignore[return-value]


def _alias_property(owner: str, old: str, new: str, settable: bool) -> property:
    def get(self: Any) -> Any:
        warn_renamed(f"{owner}.{old}", f"{owner}.{new}")
        return getattr(self, new)

    def set_(self: Any, value: Any) -> None:
        warn_renamed(f"{owner}.{old}", f"{owner}.{new}")
        setattr(self, new, value)

    return property(get, set_ if settable else None, doc=f"Deprecated alias of ``{new}``.")


def _renamed_init(cls: type, renames: Mapping[str, str]) -> None:
    """Wrap ``cls.__init__`` so that the keyword ``old`` is taken as ``new`` (with a warning)."""
    init = cls.__init__
    owner = cls.__name__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for old, new in renames.items():
            if old not in kwargs:
                continue
            if new in kwargs:
                raise TypeError(f"{owner}() got both {new}= and its deprecated alias {old}=")
            warn_renamed(f"{owner}({old}=...)", f"{owner}({new}=...)")
            kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]


def renamed(renames: Mapping[str, str]) -> Callable[[T], T]:
    """Class decorator (put it above ``@dataclass``): every ``old`` of ``renames``
    ({old: new}) becomes a deprecated property reading (and, on a non-frozen class,
    writing) ``new``; where ``new`` is a dataclass field, the constructor also takes
    the keyword ``old`` for it.  A method renamed the same way keeps working: the
    property returns the bound new method."""

    def decorate(cls: T) -> T:
        is_dc = dataclasses.is_dataclass(cls)
        fields = {f.name for f in dataclasses.fields(cls) if f.init} if is_dc else set()
        frozen = is_dc and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        init_renames = {old: new for old, new in renames.items() if new in fields}
        if init_renames:
            _renamed_init(cls, init_renames)
        for old, new in renames.items():
            attr = getattr(cls, new, None)  # a field's default, a property, a method or None
            settable = not frozen and not (isinstance(attr, property) or callable(attr))
            setattr(cls, old, _alias_property(cls.__name__, old, new, settable))
        return cls

    return decorate
