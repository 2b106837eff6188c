"""The activation-aware mode of decompose (the default for nonlinear activations):
start, refinement, guarantees, max_iter, the path recorded in info.

Errors are recomputed here with plain numpy activations (independent of the code
under test); the starts are recomputed through the public Gram-mode decompose."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.special import erf

from lowrank_sparse import decompose

ACTS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.01 * z),
    "gelu": lambda z: 0.5 * z * (1.0 + erf(z / np.sqrt(2.0))),
    "silu": lambda z: z / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
}


def _layer(m: int = 24, n: int = 16, N: int = 480, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, n)) / np.sqrt(n)
    X = rng.normal(size=(n, N)) * rng.uniform(0.3, 2.0, size=(n, 1))
    b = 0.2 * rng.normal(size=m)
    return W, X, b


def post_err(M: np.ndarray, W: np.ndarray, X: np.ndarray, b: np.ndarray, act: str) -> float:
    f = ACTS[act]
    Y = f(W @ X + b[:, None])
    return float(np.linalg.norm(f(M @ X + b[:, None]) - Y) / np.linalg.norm(Y))


def _dense(d) -> np.ndarray:
    return d.U @ d.V + d.S


@pytest.mark.parametrize("act", sorted(ACTS))
def test_every_activation_improves_on_its_start(act: str) -> None:
    W, X, b = _layer()
    r, dens = 3, 0.1
    d = decompose(W, r, dens, X=X, bias=b, activation=act, refine=True)
    e = d.info.extra
    # feasible: rank and budget of S
    assert np.linalg.matrix_rank(d.U @ d.V, tol=1e-9) <= r
    assert np.count_nonzero(d.S) <= round(dens * W.size)
    # reported error is the post-activation error on all calibration columns
    assert e["error"] == pytest.approx(post_err(_dense(d), W, X, b, act), rel=1e-6)
    # never worse than the start, which is the better of the two candidates on the fit part
    assert e["error"] <= e["error_start"] + 1e-12
    assert e["start"] == min(e["start_errors"], key=e["start_errors"].get)
    # the fitting objective decreases monotonically along the iterations
    assert np.all(np.diff(d.info.objective) <= 1e-12)
    assert d.info.iterations == len(d.info.objective) - 1 or d.info.converged


def _starts_recomputed(W, X, r, dens):
    """The two starts through the public API, fitted on the first 7/8 of the columns:
    Gram-mode decompose and OATS (unstructured budget, 25 warm-started alternations)."""
    from lowrank_sparse.peers import oats

    Xf = X[:, : X.shape[1] - X.shape[1] // 8]
    return {"gram": decompose(W, r, dens, gram=Xf @ Xf.T / Xf.shape[1]),
            "oats": oats(W, r, dens, Xf, pattern="unstructured", iters=25, exact_svd=False)}


def test_starts_are_fitted_on_the_fitting_columns_recomputed_independently() -> None:
    W, X, b = _layer(m=32, n=24, N=800, seed=3)
    d = decompose(W, 4, 0.1, X=X, bias=b, activation="gelu", refine=True)
    e = d.info.extra
    for name, s in _starts_recomputed(W, X, 4, 0.1).items():
        assert e["start_errors"][name] == pytest.approx(post_err(_dense(s), W, X, b, "gelu"), rel=1e-5), name
    assert e["error_start"] == pytest.approx(e["start_errors"][e["start"]], rel=1e-9)
    assert post_err(_dense(d), W, X, b, "gelu") < e["error_start"]
    assert e["heldout_samples"] == 100 and e["samples"] == 800


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_the_candidate_with_the_lower_heldout_error_is_returned(act: str) -> None:
    W, X, b = _layer(m=32, n=24, N=800, seed=4)
    d = decompose(W, 4, 0.1, X=X, bias=b, activation=act)
    e = d.info.extra
    assert e["selection"] == "held-out" and set(e["heldout_errors"]) == {"gram", "oats"}
    Xh = X[:, 700:]
    assert e["heldout_errors"][e["start"]] == pytest.approx(post_err(_dense(d), W, Xh, b, act), rel=1e-6)
    assert e["heldout_errors"][e["start"]] == min(e["heldout_errors"].values())
    for name in ("gram", "oats"):  # each refined candidate is no worse than its start on all columns
        assert e["refined_errors"][name] <= e["start_errors"][name] + 1e-12


def test_without_a_heldout_part_the_better_start_on_all_columns_is_refined() -> None:
    W, X, b = _layer(m=24, n=16, N=48, seed=5)  # 48 columns: 6 would be held out, below the minimum 8
    d = decompose(W, 3, 0.1, X=X, bias=b, activation="gelu")
    e = d.info.extra
    assert e["selection"] == "calibration" and e["heldout_samples"] == 0 and "heldout_errors" not in e
    g = decompose(W, 3, 0.1, gram=X @ X.T / X.shape[1])
    assert e["start_errors"]["gram"] == pytest.approx(post_err(_dense(g), W, X, b, "gelu"), rel=1e-5)
    assert e["start"] == min(e["start_errors"], key=e["start_errors"].get)
    assert post_err(_dense(d), W, X, b, "gelu") <= e["error_start"] + 1e-12


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_planted_low_rank_plus_sparse_is_recovered(act: str) -> None:
    rng = np.random.default_rng(1)
    m, n, r, k = 24, 16, 3, 30
    S0 = np.zeros((m, n))
    S0.flat[rng.choice(m * n, k, replace=False)] = 2.0 * rng.normal(size=k)
    W = rng.normal(size=(m, r)) @ rng.normal(size=(r, n)) + S0
    X = rng.normal(size=(n, 400))
    b = 0.1 * rng.normal(size=m)
    d = decompose(W, r, k / (m * n), X=X, bias=b, activation=act, max_iter=1000, refine=True)
    assert d.info.converged
    assert d.info.extra["error_start"] > 1e-5  # the start is not exact ...
    assert post_err(_dense(d), W, X, b, act) < 1e-8  # ... the refinement is


def test_native_and_torch_backends_agree() -> None:
    W, X, b = _layer(seed=4)
    kw = dict(X=X, bias=b, activation="silu", refine=True)
    dn = decompose(W, 3, 0.1, backend="native", **kw)
    dt = decompose(W, 3, 0.1, backend="torch", **kw)
    assert dn.info.extra["start"] == dt.info.extra["start"]
    en, et = post_err(_dense(dn), W, X, b, "silu"), post_err(_dense(dt), W, X, b, "silu")
    assert en == pytest.approx(et, rel=1e-3, abs=1e-6)
    np.testing.assert_allclose(_dense(dn), _dense(dt), atol=1e-4 * np.abs(W).max())


def test_max_iter_stops_without_a_warning() -> None:
    # like the ADMM: the cap is recorded (converged False, stop "max_iter"), not warned
    W, X, b = _layer(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = decompose(W, 3, 0.1, X=X, bias=b, activation="tanh", max_iter=1)
    assert not d.info.converged and d.info.iterations == 1
    assert d.info.extra["stop"] == "max_iter" and d.info.path == "refine"
    assert d.info.extra["error"] <= d.info.extra["error_start"] + 1e-12


@pytest.mark.parametrize("act", sorted(ACTS))
def test_default_path_is_the_refinement_and_false_gives_the_admm(act: str) -> None:
    W, X, b = _layer(seed=8)
    d = decompose(W, 3, 0.1, X=X, bias=b, activation=act)
    e = decompose(W, 3, 0.1, X=X, bias=b, activation=act, refine=True)
    a = decompose(W, 3, 0.1, X=X, bias=b, activation=act, refine=False, max_iter=20)
    assert d.info.path == e.info.path == "refine" and a.info.path == "admm"
    np.testing.assert_array_equal(_dense(d), _dense(e))
    assert a.info.iterations == 20 and "stop" not in a.info.extra
    g = decompose(W, 3, 0.1, X=X, refine=True)  # identity: the Gram-mode ADMM, unchanged
    h = decompose(W, 3, 0.1, X=X, refine=False)
    assert g.info.path == h.info.path == "admm"
    np.testing.assert_array_equal(_dense(g), _dense(h))


def test_relaxed_with_refine_true_is_refused() -> None:
    W, X, b = _layer(seed=9)
    with pytest.raises(ValueError, match="relaxed"):
        decompose(W, 3, 0.1, X=X, bias=b, activation="relu", relaxed=True, refine=True)
    d = decompose(W, 3, 0.1, X=X, bias=b, activation="relu", relaxed=True, max_iter=10)
    assert d.info.path == "admm"


def test_rarely_active_inputs_keep_moderate_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    # inputs nonzero on one or two samples: the damping holds their columns near W0
    import lowrank_sparse.activation_aware as aa

    rng = np.random.default_rng(11)
    m, n, N = 32, 48, 320
    W = rng.normal(size=(m, n)) / np.sqrt(n)
    X = np.maximum(rng.normal(size=(n, N)), 0.0)
    for j in range(8):  # rare inputs: one or two small nonzero samples
        X[j] = 0.0
        X[j, rng.choice(N - N // 8, 1 + j % 2, replace=False)] = 0.05
    b = 0.1 * rng.normal(size=m)
    d = decompose(W, 4, 0.1, X=X, bias=b, activation="relu")
    chosen = _starts_recomputed(W, X, 4, 0.1)[d.info.extra["start"]]
    assert post_err(_dense(chosen), W, X, b, "relu") == pytest.approx(d.info.extra["error_start"], rel=1e-5)
    monkeypatch.setattr(aa, "RIDGE", 0.0)
    undamped = decompose(W, 4, 0.1, X=X, bias=b, activation="relu")
    assert undamped.info.extra["start"] == d.info.extra["start"]
    dev = lambda M, cols: np.abs(_dense(M) - W)[:, cols].max()  # noqa: E731
    # measured: rare columns 1.99 with the damping, 7.43 without; the others 0.25 both ways
    assert dev(d, slice(0, 8)) <= dev(undamped, slice(0, 8)) / 3
    assert dev(d, slice(8, None)) <= 1.1 * dev(undamped, slice(8, None))
    assert d.info.extra["error"] <= d.info.extra["error_start"] + 1e-12


def test_conv_weight_with_unfolded_patches_and_float32() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    imgs = torch.randn(6, 3, 8, 8)
    P = torch.nn.functional.unfold(imgs, 3, padding=1)  # (6, 27, 64)
    X = P.permute(1, 0, 2).reshape(27, -1)  # (27, 384) patches as columns
    W = conv.weight.detach().reshape(8, -1)
    d = decompose(W, 2, 0.2, "channel", block=9, X=X, bias=conv.bias.detach(), activation="relu", refine=True)
    assert d.U.dtype == torch.float32
    groups = (d.S.reshape(8, 3, 9) != 0).any(dim=2)  # channel structure: whole kernels kept
    assert torch.equal((d.S.reshape(8, 3, 9) != 0), groups[:, :, None].expand(8, 3, 9))
    Wn, Xn, bn = W.double().numpy(), X.double().numpy(), conv.bias.detach().double().numpy()
    e = post_err(_dense(d).double().numpy(), Wn, Xn, bn, "relu")
    assert e == pytest.approx(d.info.extra["error"], rel=1e-4)
    assert e <= d.info.extra["error_start"] + 1e-6


def test_slices_keep_the_block_pattern_of_v() -> None:
    W, X, b = _layer(m=20, n=16, seed=6)
    d = decompose(W, 2, 0.05, X=X, bias=b, activation="gelu", slices=2)
    assert d.info.extra["start"] == "gram" and set(d.info.extra["start_errors"]) == {"gram"}
    V = d.V
    assert np.all(V[:2, 8:] == 0) and np.all(V[2:, :8] == 0)
    for i in range(2):  # the balanced factors: equal singular values per slice
        su = np.linalg.svd(d.U[:, 2 * i : 2 * i + 2], compute_uv=False)
        sv = np.linalg.svd(V[2 * i : 2 * i + 2], compute_uv=False)
        np.testing.assert_allclose(su, sv, rtol=1e-6)
    assert d.info.extra["error"] <= d.info.extra["error_start"] + 1e-12
