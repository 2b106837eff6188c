"""keep_freed_memory: glibc's mallopt applied once, a clean False where it cannot be."""

from __future__ import annotations

import ctypes
import platform

import pytest

from lowrank_sparse import _allocator


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_allocator, "_applied", None)
    return _allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_applies_on_glibc_and_only_once(fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = fresh._mallopt
    monkeypatch.setattr(fresh, "_mallopt", lambda p, v: calls.append((p, v)) or real(p, v))
    assert fresh.keep_freed_memory() is True
    assert calls == [(fresh._M_MMAP_THRESHOLD, fresh.MMAP_THRESHOLD), (fresh._M_TRIM_THRESHOLD, fresh.TRIM_THRESHOLD)]
    assert fresh.keep_freed_memory() is True and len(calls) == 2


def test_no_c_library_is_a_clean_false(fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):
        raise OSError("no libc here")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    assert fresh.keep_freed_memory() is False


def test_a_refused_setting_is_a_false(fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fresh, "_mallopt", lambda p, v: p != fresh._M_TRIM_THRESHOLD)
    assert fresh.keep_freed_memory() is False
