"""pytest configuration for the benchmark suite (not part of the default test run:
the root config has testpaths = ["tests"]).

    python -m pytest benchmarks --benchmark-only                 # full shapes
    LRS_BENCH_SHAPES=quick python -m pytest benchmarks --benchmark-only
    LRS_BENCH_SHAPES=vgg16.fc7,512x4608 python -m pytest benchmarks --benchmark-only

Files named bench_*.py are collected here (pytest's default pattern is test_*.py).
Every benchmark runs with LRS_BENCH_THREADS threads (default 2) in torch, the BLAS
pools and the C++ core.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Optional[pytest.Module]:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session", autouse=True)
def _bench_threads() -> None:
    import harness

    harness.set_threads(int(os.environ.get("LRS_BENCH_THREADS", "2")))
