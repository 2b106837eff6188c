"""Pure-torch operators (lowrank_sparse.ops.torch_ops) vs tests/reference.py and vs the C++ core.

Runs on CPU, and on CUDA too when a GPU is present (the path CUDA tensors take).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowrank_sparse.ops as ops
from lowrank_sparse.ops import torch_ops as T
from lowrank_sparse.structure import Structure

import reference as ref  # tests/ is on sys.path (pytest rootdir conftest, prepend mode)

DEVICES = [pytest.param("cpu", id="cpu")] + (
    [pytest.param("cuda", id="cuda")] if torch.cuda.is_available() else []
)
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
GROUPS = [("row", 1), ("column", 1), ("channel", 4)]


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_match_reference(tgen, device, dtype):
    x = torch.randn(50, 64, generator=tgen, dtype=dtype).to(device)
    xn = to_np(x)
    np.testing.assert_array_equal(to_np(T.soft_threshold(x, 0.4)), ref.soft_threshold(xn, 0.4))
    for k in (0, 1, 777, 3200):
        np.testing.assert_array_equal(to_np(T.topk_project(x, k)), ref.topk_project(xn, k))


@pytest.mark.parametrize("device", DEVICES)
def test_topk_planted_ties(device):
    g = np.random.default_rng(7)
    x = (g.integers(1, 4, 5000) * g.choice([-1, 1], 5000)).astype(np.float64)
    xt = torch.from_numpy(x).to(device)
    for k in (1, 1234, 2500, 4999):
        np.testing.assert_array_equal(to_np(T.topk_project(xt, k)), ref.topk_project(x, k))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,block", GROUPS, ids=[g[0] for g in GROUPS])
def test_group_ops_match_reference(tgen, device, dtype, kind, block):
    x = torch.randn(40, 48, generator=tgen, dtype=dtype).to(device)
    xn = to_np(x)
    s = Structure(kind, block=block)
    G = s.num_groups(40, 48)
    for k in (0, 1, G // 2, G):
        np.testing.assert_array_equal(
            to_np(T.group_topk_project(x, k, s)), ref.group_topk_project(xn, k, kind, block)
        )
    tau = float(np.median(ref.group_norms(xn, kind, block)))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(
        to_np(T.group_soft_threshold(x, tau, s)), ref.group_soft_threshold(xn, tau, kind, block),
        rtol=tol, atol=tol,
    )


@pytest.mark.parametrize("kind,block", GROUPS, ids=[g[0] for g in GROUPS])
def test_group_topk_planted_ties(kind, block):
    x = np.tile(np.array([[1.0, -2.0, 2.0, 1.0]]), (8, 6))  # every row identical
    x[:, :4] = 2.0 * x[:, :4] if kind != "row" else x[:, :4]
    s = Structure(kind, block=block)
    for k in range(s.num_groups(8, 24) + 1):
        np.testing.assert_array_equal(
            T.group_topk_project(torch.from_numpy(x), k, s).numpy(),
            ref.group_topk_project(x, k, kind, block),
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nm", [(1, 2), (2, 4), (3, 8)], ids=["1:2", "2:4", "3:8"])
def test_nm_matches_reference(tgen, device, nm):
    n, m = nm
    x = torch.randn(17, 4 * m, generator=tgen, dtype=torch.float64)
    x[2, :m] = -0.5  # tied window
    out = T.nm_project(x.to(device), n, m)
    np.testing.assert_array_equal(to_np(out), ref.nm_project(x.numpy(), n, m))


@pytest.mark.parametrize("structure", ["unstructured", "row", "column", "channel", "2:4"])
def test_torch_ops_equal_native(tgen, structure):
    """The two backends give bit-identical projections on the same input."""
    x = torch.randn(32, 64, generator=tgen)
    k = 300 if structure == "unstructured" else 5
    a = T.project(x, k, Structure("channel", block=4) if structure == "channel" else structure)
    b = ops.project(x, k, structure, block=4)
    assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_truncated_svd_matches_full_svd(rng, device, dtype):
    A_np, _ = ref.decaying_matrix(rng, 120, 90, decay=0.7)
    A = torch.from_numpy(A_np).to(device=device, dtype=dtype)
    U, s, Vt, V = T.truncated_svd(A, 8, oversample=8, power_iters=4)
    exact = torch.linalg.svdvals(A.double())
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(s.double(), exact[:8], rtol=10 * tol, atol=tol)
    _, _, Vt_ex = np.linalg.svd(A_np, full_matrices=False)
    max_dist = 1e-2 if dtype == torch.float32 else 1e-5
    assert ref.subspace_distance(to_np(Vt.double()).T, Vt_ex[:8].T) < max_dist
    # warm start from the exact subspace: one iteration is exact
    V0 = torch.from_numpy(np.ascontiguousarray(Vt_ex[:16].T)).to(device=device, dtype=dtype)
    _, s1, _, _ = T.truncated_svd(A, 8, V0=V0, power_iters=1)
    torch.testing.assert_close(s1.double(), exact[:8], rtol=10 * tol, atol=tol)


def test_svt_matches_reference(rng):
    A_np, s = ref.decaying_matrix(rng, 70, 60, decay=0.7)
    tau = float(s[3] + s[4]) / 2
    U, sv, Vt, _ = T.svt(torch.from_numpy(A_np), tau, 8, power_iters=4)
    assert sv.shape == (4,)
    np.testing.assert_allclose(((U * sv) @ Vt).numpy(), ref.svt(A_np, tau), atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ops_dispatch_cuda_tensors_to_torch():
    x = torch.randn(16, 32, device="cuda")
    out = ops.project(x, 3, "column")
    assert out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), ref.group_topk_project(x.cpu().numpy(), 3, "column"))
