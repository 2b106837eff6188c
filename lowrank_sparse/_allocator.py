"""Steady CPU memory for latency measurements: keep freed activation buffers in the heap.

With glibc's default malloc, a buffer above the (dynamic) mmap threshold is mapped on
allocation and unmapped when freed, and the top of the heap is trimmed back to the
system; a CNN forward at batch 64 then spends most of its time in page faults on fresh
activation memory (measured: a small CNN's forward at 5.6 ms with the buffers reused
against 10-17 ms without, from one run to the next).  Inference servers avoid that with
jemalloc or tcmalloc, or with the same two glibc settings this module applies through
``mallopt`` (``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the
environment do the same before start-up).

The command line and the benchmarks call :func:`keep_freed_memory` once before they time
anything, so dense and compressed models are timed under the same, steady allocator;
the library itself never changes a user's process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: buffers up to this size come from the heap (glibc's cap for the mmap threshold on 64-bit: 32 MiB)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: keep up to this much free memory at the top of the heap
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); returns whether
    the settings are in force (False where the C library is not glibc)."""
    global _applied
    if _applied is None:
        _applied = _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _applied


def _mallopt(param: int, value: int) -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        fn = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn(param, value) == 1
