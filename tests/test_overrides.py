"""lowrank_sparse._overrides: config objects with keyword shortcuts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lowrank_sparse._overrides import overridden, resolve_config


@dataclass(frozen=True)
class Demo:
    a: int = 1
    b: str = "x"


def test_shortcuts_that_are_none_keep_the_config_field() -> None:
    out = resolve_config(Demo(a=5), Demo, {"a": None, "b": "y"}, "config", "demo")
    assert (out.a, out.b) == (5, "y")


def test_default_config_when_none_given() -> None:
    assert resolve_config(None, Demo, {}, "config", "demo") == Demo()


def test_explicit_overrides_apply_even_falsy_values() -> None:
    assert overridden(Demo(a=5), {"a": 0}, "demo").a == 0


def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match=r"unknown demo option\(s\) \['c'\]"):
        resolve_config(None, Demo, {"c": 1}, "config", "demo")


def test_wrong_config_type_names_the_argument() -> None:
    with pytest.raises(TypeError, match="calibration must be a lowrank_sparse.Demo, got int"):
        resolve_config(3, Demo, {}, "calibration", "demo")
