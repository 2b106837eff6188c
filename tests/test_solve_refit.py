"""refit_support against the least-squares problem it solves, written independently:
each row's kept values minimise ||X^T (R_i - S_i)||^2 + lam ||S_iJ - R_iJ||^2, solved
here by numpy's lstsq on the stacked system."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_sparse.solve.refit import REFIT_RIDGE, refit_support


def _reference(R: np.ndarray, mask: np.ndarray, X: np.ndarray, lam: float) -> np.ndarray:
    S = np.zeros_like(R)
    for i in range(R.shape[0]):
        J = np.flatnonzero(mask[i])
        if J.size == 0:
            continue
        A = np.vstack([X[J].T, np.sqrt(lam) * np.eye(J.size)])
        b = np.concatenate([X.T @ R[i], np.sqrt(lam) * R[i, J]])
        S[i, J] = np.linalg.lstsq(A, b, rcond=None)[0]
    return S


@pytest.mark.parametrize(
    "m,n,tokens,layout",
    [(40, 30, 90, "rows differ"), (24, 32, 20, "fewer tokens than kept"), (16, 20, 60, "one support"),
     (12, 10, 40, "empty and full rows")],
    ids=lambda v: str(v).replace(" ", "-"),
)
def test_refit_matches_lstsq(m: int, n: int, tokens: int, layout: str) -> None:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, tokens)) * np.linspace(0.2, 3.0, n)[:, None]
    R = rng.standard_normal((m, n))
    if layout == "one support":
        mask = np.broadcast_to(rng.random(n) < 0.4, (m, n)).copy()
    else:
        mask = rng.random((m, n)) < 0.35
    if layout == "empty and full rows":
        mask[0], mask[1] = False, True
    G = X @ X.T
    lam = REFIT_RIDGE * float(np.diag(G).mean())
    got = refit_support(torch.from_numpy(R), torch.from_numpy(mask), torch.from_numpy(G)).numpy()
    ref = _reference(R, mask, X, lam)
    assert np.all(got[~mask] == 0)
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())


def test_refit_never_worse_than_masking() -> None:
    """On its support the refit is the minimiser, so its G-metric error is at most that
    of plain masking (S = R on the support)."""
    rng = np.random.default_rng(3)
    n, m = 48, 32
    X = rng.standard_normal((n, 200)) * ((1.0 + np.arange(n)) ** -0.5)[:, None]
    R = torch.from_numpy(rng.standard_normal((m, n)))
    mask = torch.from_numpy(rng.random((m, n)) < 0.3)
    G = torch.from_numpy(X @ X.T)

    def err(S: torch.Tensor) -> float:
        E = R - S
        return float(((E @ G) * E).sum())

    assert err(refit_support(R, mask, G)) < err(torch.where(mask, R, torch.zeros(())))


@pytest.mark.parametrize("mode", ["weight", "gram"])
def test_decompose_refit_switch(mode: str) -> None:
    """refit=False returns the ADMM's S as it stands: same support as the refitted one,
    an error (in the layer's metric, computed here) at least as large, and
    info.extra['refit'] False; bad values are refused."""
    import lowrank_sparse as lrs

    rng = np.random.default_rng(11)
    m, n = 48, 40
    W = (rng.standard_normal((m, 6)) @ rng.standard_normal((6, n)) + 0.3 * rng.standard_normal((m, n))).astype(np.float32)
    X = rng.standard_normal((n, 300)) * np.linspace(0.2, 2.0, n)[:, None]
    G = X @ X.T / 300 if mode == "gram" else None
    on = lrs.decompose(W, 4, 0.2, gram=G, max_iter=40)
    off = lrs.decompose(W, 4, 0.2, gram=G, max_iter=40, refit=False)
    metric = G if G is not None else np.eye(n)

    def err(d) -> float:
        E = W.astype(np.float64) - np.asarray(d.U, np.float64) @ np.asarray(d.V, np.float64) - np.asarray(d.S, np.float64)
        return float(np.sum((E @ metric) * E))

    assert off.info.extra["refit"] is False and on.info.extra["refit"] is True
    np.testing.assert_array_equal(np.asarray(on.S) != 0, np.asarray(off.S) != 0)
    assert err(on) <= err(off) * (1 + 1e-6)
    with pytest.raises(TypeError, match="refit"):
        lrs.decompose(W, 4, 0.2, refit="no")
