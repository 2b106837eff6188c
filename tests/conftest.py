"""Shared pytest fixtures: seeded generators and the hypothesis profile."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One thread for torch: the tests use small problems, and on a 2-core machine torch's
# pool, SciPy's OpenBLAS pool and the core's workers contending for the same cores made
# solver-heavy tests an order of magnitude slower.  Benchmarks set their own counts.
torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy Generator seeded identically for every test."""
    return np.random.default_rng(12345)


@pytest.fixture
def tgen() -> torch.Generator:
    """A torch CPU Generator seeded identically for every test."""
    return torch.Generator().manual_seed(12345)
