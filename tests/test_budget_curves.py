"""Per-layer error curves against plain torch.linalg / numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowrank_sparse.budget import CurveCache, LayerSpec, build_curves
from lowrank_sparse.budget.curves import RANK_GRID, config_error
from lowrank_sparse.structure import parse_structure


def _svd_rel_err(a: np.ndarray, j: int) -> float:
    s = np.linalg.svd(a, compute_uv=False)
    return math.sqrt((s[j:] ** 2).sum() / (s**2).sum())


@pytest.mark.parametrize("m,n", [(20, 50), (50, 20)], ids=["wide", "tall"])
def test_rank_curve_is_eckart_young(m, n, tgen):
    w = torch.randn(m, n, generator=tgen, dtype=torch.float64)
    cur = build_curves(LayerSpec("l", w.float()), "rank_only", parse_structure("unstructured"))
    assert cur.dense[-1] and cur.errors[-1] == 0.0 and cur.sizes[-1] == m * n
    assert np.all(np.diff(cur.sizes) > 0) and np.all(np.diff(cur.errors) < 0)
    for k in range(len(cur) - 1):
        j = int(cur.ranks[k])
        assert cur.sizes[k] == j * (m + n)
        assert cur.errors[k] == pytest.approx(_svd_rel_err(w.numpy(), j), abs=2e-5)


def test_data_aware_curve_uses_whitened_singular_values(tgen):
    m, n, N = 16, 24, 200
    w = torch.randn(m, n, generator=tgen, dtype=torch.float64)
    x = torch.randn(n, N, generator=tgen, dtype=torch.float64) * torch.linspace(0.1, 3.0, n, dtype=torch.float64)[:, None]
    g = x @ x.T / N
    ev, q = torch.linalg.eigh(g)
    g_half = (q * ev.clamp_min(0).sqrt()) @ q.T  # symmetric square root, independent of the Cholesky path
    ref = (w @ g_half).numpy()
    cur = build_curves(LayerSpec("l", w.float(), gram=g.float()), "rank_only", parse_structure("unstructured"))
    for k in range(len(cur) - 1):
        assert cur.errors[k] == pytest.approx(_svd_rel_err(ref, int(cur.ranks[k])), abs=1e-4)


def test_sliced_curve_sums_slice_tails(tgen):
    m, c, b, g = 12, 8, 9, 4
    w = torch.randn(m, c * b, generator=tgen)
    cur = build_curves(LayerSpec("c", w, "conv", b, (4, 4)), "rank_only", parse_structure("unstructured"),
                       slice_candidates=(4,))
    wn = w.double().numpy()
    tot = (wn**2).sum()
    blocks = np.split(wn, g, axis=1)
    for k in range(len(cur) - 1):
        assert cur.slices[k] == 4
        j = int(cur.ranks[k])
        tail = sum((np.linalg.svd(bk, compute_uv=False)[j:] ** 2).sum() for bk in blocks)
        assert cur.errors[k] == pytest.approx(math.sqrt(tail / tot), abs=2e-5)
        assert cur.sizes[k] == j * g * m + j * c * b


@pytest.mark.parametrize("structure", ["unstructured", "row", "column", "channel"])
def test_sparse_curve_is_magnitude_pruning(structure, tgen):
    m, n, b = 12, 36, 4
    w = torch.randn(m, n, generator=tgen)
    st = parse_structure(structure, block=b)
    cur = build_curves(LayerSpec("c", w, "conv", b, (3, 3)), "sparse_only", st)
    e = w.double().numpy() ** 2
    groups = {"unstructured": e.reshape(-1), "row": e.sum(1), "column": e.sum(0),
              "channel": e.reshape(m, n // b, b).sum((0, 2))}[structure]
    srt = np.sort(groups)[::-1]
    for k in range(len(cur) - 1):
        kg = int(cur.nnz[k]) // st.group_size(m, n)
        assert cur.sizes[k] == cur.nnz[k]
        assert cur.errors[k] == pytest.approx(math.sqrt(1 - srt[:kg].sum() / srt.sum()), abs=1e-6)


def test_sparse_curve_sampled_for_large_layers(tgen):
    w = torch.randn(600, 700, generator=tgen) ** 3  # heavy tails; 420k entries > sample size
    cur = build_curves(LayerSpec("l", w), "sparse_only", parse_structure("unstructured"))
    e = np.sort(w.double().numpy().reshape(-1) ** 2)[::-1]
    c = np.cumsum(e)
    for k in range(0, len(cur) - 1, 37):
        kk = int(cur.nnz[k])
        assert cur.errors[k] == pytest.approx(math.sqrt(1 - c[kk - 1] / c[-1]), abs=0.01)


def test_nm_sparse_only_single_configuration(tgen):
    w = torch.randn(8, 16, generator=tgen)
    cur = build_curves(LayerSpec("l", w), "sparse_only", parse_structure("2:4"))
    assert len(cur) == 2 and cur.nnz[0] == 64
    e = (w.double().numpy() ** 2).reshape(8, 4, 4)
    kept = np.sort(e, axis=2)[:, :, 2:].sum()
    assert cur.errors[0] == pytest.approx(math.sqrt(1 - kept / e.sum()), abs=1e-6)


def _one_pass_ref(w: np.ndarray, r: int, k: int) -> float:
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    res = w - (u[:, :r] * s[:r]) @ vt[:r]
    e = np.sort((res**2).reshape(-1))[::-1]
    return math.sqrt((e.sum() - e[:k].sum()) / (w**2).sum())


def test_lowrank_sparse_proxy_matches_one_pass_reference(tgen):
    m, n = 30, 40
    w = (torch.randn(m, 3, generator=tgen) @ torch.randn(3, n, generator=tgen)).double()
    mask = torch.rand(m, n, generator=tgen) < 0.05
    w = w + mask * 5 * torch.randn(m, n, generator=tgen, dtype=torch.float64)
    cur = build_curves(LayerSpec("l", w.float()), "lowrank_sparse", parse_structure("unstructured"),
                       sparse_shares=(0.25,))
    grid = set(np.unique(np.round(np.geomspace(1, (m * n) // (m + n), RANK_GRID)).astype(int)).tolist())
    checked = 0
    for k in range(len(cur) - 1):
        r, nz = int(cur.ranks[k]), int(cur.nnz[k])
        if nz > 0 and r in grid:
            ref = min(_one_pass_ref(w.numpy(), r, nz), _svd_rel_err(w.numpy(), r))
            assert cur.errors[k] == pytest.approx(ref, abs=1e-4)
            checked += 1
    assert checked >= 2
    assert (cur.nnz[:-1] > 0).all()  # only the share 0.25 was asked for


def test_cache_computes_spectrum_once(tgen):
    layer = LayerSpec("l", torch.randn(20, 30, generator=tgen))
    cache = CurveCache()
    build_curves(layer, "rank_only", parse_structure("unstructured"), cache=cache)
    misses = cache.misses
    build_curves(layer, "rank_only", parse_structure("unstructured"), cache=cache)
    assert cache.misses == misses and cache.hits > 0
    layer.weight.mul_(2.0)  # in-place change invalidates
    build_curves(layer, "rank_only", parse_structure("unstructured"), cache=cache)
    assert cache.misses > misses


def test_config_error_exact_for_rank_only(tgen):
    w = torch.randn(10, 14, generator=tgen)
    err = config_error(LayerSpec("l", w), 4, 0.0, 1, parse_structure("unstructured"), CurveCache())
    assert err == pytest.approx(_svd_rel_err(w.double().numpy(), 4), abs=2e-5)


def test_activation_error_scale_predicts_post_relu_error(tgen):
    """scale * relative pre-activation error ~ relative post-ReLU error for a small rank error
    (checked against a plain torch computation)."""
    from lowrank_sparse.budget import activation_error_scale

    m, n, s = 40, 30, 4000
    w = torch.randn(m, n, generator=tgen, dtype=torch.float64)
    b = -8.0 * torch.ones(m, dtype=torch.float64)  # most outputs cut by the ReLU -> scale > 1
    x = torch.randn(n, s, generator=tgen, dtype=torch.float64)
    scale = activation_error_scale(w, b, x, torch.relu)
    dw = 1e-3 * torch.randn(m, n, generator=tgen, dtype=torch.float64)
    y, y2 = w @ x + b[:, None], (w + dw) @ x + b[:, None]
    pre = float(torch.linalg.norm(dw @ x) / torch.linalg.norm(w @ x))
    post = float(torch.linalg.norm(torch.relu(y) - torch.relu(y2)) / torch.linalg.norm(torch.relu(y)))
    assert scale > 1.5
    assert scale * pre == pytest.approx(post, rel=0.15)
    assert activation_error_scale(w, None, x, lambda u: u) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="do not match"):
        activation_error_scale(w, b, x[:5], torch.relu)


# ----------------------------------------------------------------------------- round 2: speed paths
@pytest.mark.parametrize("m,c,b", [(12, 16, 9), (40, 8, 9)], ids=["slices-wide", "slices-tall"])
def test_all_slice_counts_against_block_svds(m, c, b, tgen):
    """g = 8, 4, 2 from nested block Grams (wide slices) or per-slice Grams (tall slices):
    every rank of every slice count against numpy SVDs of the column blocks."""
    w = torch.randn(m, c * b, generator=tgen) * torch.linspace(0.2, 2.0, c * b)[None, :]
    cur = build_curves(LayerSpec("c", w, "conv", b, (4, 4)), "rank_only", parse_structure("unstructured"),
                       slice_candidates=(1, 2, 4, 8))
    from lowrank_sparse.budget.spectra import rank_tails

    cache = CurveCache()
    layer = LayerSpec("c", w, "conv", b, (4, 4))
    build_curves(layer, "rank_only", parse_structure("unstructured"), slice_candidates=(8, 2, 4), cache=cache)
    wn = w.double().numpy()
    tot = (wn**2).sum()
    for g in (2, 4, 8):
        tails, total = rank_tails(layer, g, cache)
        assert total == pytest.approx(tot, rel=1e-5)
        blocks = np.split(wn, g, axis=1)
        svs = [np.linalg.svd(bk, compute_uv=False) ** 2 for bk in blocks]
        for j in range(len(tails)):
            ref = sum(s[j:].sum() for s in svs)
            assert math.sqrt(tails[j] / total) == pytest.approx(math.sqrt(ref / tot), abs=2e-5), (g, j)
    assert set(cur.slices[:-1].tolist()) <= {1, 2, 4, 8}


def test_data_aware_slices_use_diagonal_gram_blocks(tgen):
    m, c, b, g, N = 10, 8, 4, 2, 300
    n = c * b
    w = torch.randn(m, n, generator=tgen, dtype=torch.float64)
    x = torch.randn(n, N, generator=tgen, dtype=torch.float64) * torch.linspace(0.3, 2.0, n, dtype=torch.float64)[:, None]
    gram = x @ x.T / N
    from lowrank_sparse.budget.spectra import rank_tails

    layer = LayerSpec("c", w.float(), "conv", b, (3, 3), gram=gram.float())
    tails, total = rank_tails(layer, g, CurveCache())
    nb = n // g
    svs = []
    for i in range(g):
        gb = gram[i * nb:(i + 1) * nb, i * nb:(i + 1) * nb]
        ev, q = torch.linalg.eigh(gb)
        half = (q * ev.clamp_min(0).sqrt()) @ q.T
        svs.append(np.linalg.svd((w[:, i * nb:(i + 1) * nb] @ half).numpy(), compute_uv=False) ** 2)
    tot = sum(s.sum() for s in svs)
    for j in range(len(tails)):
        assert math.sqrt(tails[j] / total) == pytest.approx(math.sqrt(sum(s[j:].sum() for s in svs) / tot), abs=1e-4)


def test_large_layer_path_exact_values_and_close_proxy(monkeypatch, tgen):
    """A matrix forced through the large-layer path (top 32 vectors from subspace iteration
    for the L + S proxy): the rank curve stays exact (numpy SVD) and the proxy at its grid
    ranks <= 32 is within 2e-3 of the one-pass reference computed with numpy's SVD."""
    import lowrank_sparse.budget.curves as C
    import lowrank_sparse.budget.spectra as S

    m, n, K = 120, 400, 32
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=tgen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, generator=tgen, dtype=torch.float64))
    s = torch.arange(1, m + 1, dtype=torch.float64) ** -0.7
    w = (u * s) @ v.T
    w += (torch.rand(w.shape, generator=tgen) < 0.01) * 0.05 * torch.randn(w.shape, generator=tgen, dtype=torch.float64)
    monkeypatch.setattr(S, "LARGE_MIN_DIM", 50)
    monkeypatch.setattr(S, "LS_VECTOR_RANK", K)
    layer = LayerSpec("l", w.float())
    assert S._is_large(m, n) and m * n <= C.LS_SAMPLE_ENTRIES  # all columns in the residual sample
    cache = CurveCache()
    sz, err, ranks, _, nnz, _ = C._ls_configs(layer, parse_structure("unstructured"), (0.25,), cache, 0)
    tails, total = S.rank_tails(layer, 1, cache)
    wn = w.float().double().numpy()
    sv = np.linalg.svd(wn, compute_uv=False) ** 2
    for j in (1, 10, 32, 80, 119):
        assert math.sqrt(tails[j] / total) == pytest.approx(math.sqrt(sv[j:].sum() / sv.sum()), abs=1e-4)
    assert cache.store[cache.key(layer, "spectrum+u")]["u"].shape == (m, K)
    grid = np.unique(np.round(np.geomspace(1, K, C.RANK_GRID)).astype(int))
    for r in grid:
        i = int(np.nonzero(ranks == r)[0][0])
        ref = min(_one_pass_ref(wn, int(r), int(nnz[i])), _svd_rel_err(wn, int(r)))
        assert err[i] == pytest.approx(ref, abs=2e-3), r


def test_curves_restore_thread_counts(tgen):
    from threadpoolctl import threadpool_info

    from lowrank_sparse.budget.spectra import serial_linalg

    before = torch.get_num_threads()
    blas_before = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    with serial_linalg():
        assert torch.get_num_threads() == 1
        assert all(d["num_threads"] == 1 for d in threadpool_info() if d["user_api"] == "blas")
    build_curves(LayerSpec("l", torch.randn(30, 40, generator=tgen)), "lowrank_sparse", parse_structure("unstructured"))
    assert torch.get_num_threads() == before
    assert [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"] == blas_before


def _dominated_by_frontier(cur, cost_of, cfg_cost, cfg_err, tol=1e-12) -> bool:
    """Every candidate has a frontier entry at most as costly and at most as wrong."""
    fc = np.array([cost_of(k) for k in range(len(cur))])
    return all(np.any((fc <= c + tol) & (cur.errors <= e + tol)) for c, e in zip(cfg_cost, cfg_err))


@pytest.mark.parametrize("mode", ["rank_only", "lowrank_sparse"])
def test_candidates_hold_the_size_frontier_and_a_frontier_by_any_cost(mode, tgen):
    from lowrank_sparse.budget.curves import candidate_configs, frontier
    m, n = 24, 40
    layer = LayerSpec("l", (torch.randn(m, n, generator=tgen) * torch.linspace(1.0, 0.05, n)).float())
    st = parse_structure("unstructured")
    cfg = candidate_configs(layer, mode, st)
    by_size = build_curves(layer, mode, st)
    assert np.array_equal(frontier(layer, cfg).sizes, by_size.sizes)
    # every frontier entry is one of the candidates (or dense), with the candidate's error
    pairs = {(int(s), int(r), int(z)): float(e) for s, e, r, z in zip(cfg.sizes, cfg.errors, cfg.ranks, cfg.nnz)}
    for k in range(len(by_size) - 1):
        key = (int(by_size.sizes[k]), int(by_size.ranks[k]), int(by_size.nnz[k]))
        assert by_size.errors[k] == pytest.approx(pairs[key])
    # another cost: a made-up "seconds" where S costs five times a low-rank value
    cost = cfg.ranks * (m + n) * 1.0 + 5.0 * cfg.nnz
    cur = frontier(layer, cfg, cost, dense_cost=float(m * n))
    key = np.where(cur.dense, m * n, cur.ranks * (m + n) + 5.0 * cur.nnz)
    assert np.all(np.diff(key) >= 0) and np.all(np.diff(cur.errors) < 0)
    assert _dominated_by_frontier(cur, lambda k: key[k], cost, cfg.errors)
    if mode == "lowrank_sparse":  # the size frontier holds S; under this cost some size is served by rank only
        assert (by_size.nnz[:-1] > 0).any() and (cur.nnz[:-1] == 0).sum() > (by_size.nnz[:-1] == 0).sum()
    # index_for_size on a frontier whose sizes do not ascend: the most accurate entry within the cap
    for cap in np.quantile(cur.sizes, [0.1, 0.5, 0.9]):
        i = cur.index_for_size(float(cap))
        fit = np.nonzero(cur.sizes <= cap)[0]
        assert i == (fit[-1] if len(fit) else 0)


def test_frontier_needs_its_cost_and_dense_cost_together(tgen):
    from lowrank_sparse.budget.curves import candidate_configs, frontier
    layer = LayerSpec("l", torch.randn(8, 12, generator=tgen))
    cfg = candidate_configs(layer, "rank_only", parse_structure("unstructured"))
    with pytest.raises(ValueError, match="dense_cost"):
        frontier(layer, cfg, np.ones(len(cfg.sizes)))
    with pytest.raises(ValueError, match="one entry per configuration"):
        frontier(layer, cfg, np.ones(len(cfg.sizes) + 1), 1.0)
