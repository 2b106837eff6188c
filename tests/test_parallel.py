"""The core's persistent worker pool (csrc/parallel.cpp): concurrent callers, forked
children and long runs of short parallel regions all get the serial reference results."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import lowrank_sparse.ops as ops

import reference as ref  # tests/ is on sys.path (pytest rootdir conftest, prepend mode)

N = 120_000  # above the core's parallel grain: the top-k passes run on the pool


@pytest.fixture
def two_threads():
    old = ops.get_num_threads()
    ops.set_num_threads(2)
    yield
    ops.set_num_threads(old)


def test_concurrent_callers_get_the_reference_results(rng, two_threads):
    """Four Python threads (the GIL is released inside the core) call parallel passes at
    once: one owns the pool, the others start threads of their own; all results exact."""
    xs = [rng.standard_normal(N).astype(np.float32) for _ in range(4)]
    k = N // 7
    want = [ref.topk_project(x, k) for x in xs]
    bad: list[str] = []

    def work(i: int) -> None:
        for _ in range(25):
            out = ops.topk_project(xs[i], k)
            if not np.array_equal(out, want[i]):
                bad.append(f"caller {i}")
                return

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a caller hung"
    assert bad == []


def _child(x: np.ndarray, k: int, q) -> None:
    q.put(ops.topk_project(x, k))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_runs_parallel_passes(rng, two_threads):
    """The parent's pool threads do not exist in a forked child; the child must build its
    own pool instead of waiting on the parent's (a hang) and get the exact result."""
    x = rng.standard_normal(N).astype(np.float32)
    k = N // 5
    want = ref.topk_project(x, k)
    assert np.array_equal(ops.topk_project(x, k), want)  # the pool is running now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        p = ctx.Process(target=_child, args=(x, k, q))
        p.start()
    got = q.get(timeout=120)
    p.join(timeout=60)
    assert p.exitcode == 0
    assert np.array_equal(got, want)


_STRESS = """
import numpy as np, lowrank_sparse.ops as ops
ops.set_num_threads(2)
rng = np.random.default_rng(5)
x = rng.standard_normal(70_000).astype(np.float32)
k = 9_000
first = ops.topk_project(x, k)
for i in range(3000):  # thousands of back-to-back regions, some after idle gaps
    out = ops.topk_project(x, k)
    if not np.array_equal(out, first):
        raise SystemExit(f"mismatch at {i}")
    if i % 500 == 0:
        import time; time.sleep(0.01)  # workers fall asleep; the next job must wake them
print("ok", np.count_nonzero(first))
"""


def test_many_short_regions_neither_hang_nor_differ():
    """Lost wake-ups would hang; a torn job would differ.  Run in a subprocess with a
    time limit so that a hang fails the test instead of the suite."""
    proc = subprocess.run([sys.executable, "-c", _STRESS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "9000"]
