"""Tests for lowrank_sparse.compress on small networks trained here on real data
(scikit-learn's 1,797 8x8 digits).  Errors and accuracies are computed independently
in plain torch from the original modules and the new ones."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from digits_fixtures import digits_split, train_adam  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse.budget import Budget
from lowrank_sparse.compress import compress
from lowrank_sparse.nn import LowRankSparseConv2d, LowRankSparseLinear
from lowrank_sparse.nn.counts import dense_macs, dense_params, model_macs, model_params

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn")


# ------------------------------------------------------------------------- fixtures


class _OneThread:
    """Train with one torch thread: much faster on a loaded 2-core machine."""

    def __enter__(self) -> None:
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.n)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One thread for torch, the native solver (it follows torch) and BLAS: on the shared
    2-core test machines oversubscription makes these solves several times slower."""
    from threadpoolctl import threadpool_limits

    with _OneThread(), threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    return digits_split()


def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def mlp(digits):
    Xtr, ytr, Xte, yte = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return train_adam(model, Xtr, ytr, epochs=15)


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)  # depthwise: skipped
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.dw(x)
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def cnn(digits):
    Xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    return train_adam(_CNN(), Xtr, ytr, epochs=4)


def _post_act_error(W0: torch.Tensor, b0: torch.Tensor, module: nn.Module, X: torch.Tensor) -> float:
    """||relu(W0 x + b) - relu(module(x))|| / ||relu(W0 x + b)|| over rows x of X."""
    with torch.no_grad():
        ref = torch.relu(X.double() @ W0.double().T + b0.double())
        out = torch.relu(module(X).double())
    return float(torch.linalg.norm(ref - out) / torch.linalg.norm(ref))


#: solver settings for tests that check plumbing, not solution quality (seconds, not minutes)
FAST = dict(max_iter=30)

# --------------------------------------------------------------------------- tests


def test_digits_mlp_is_trained(mlp, digits):
    assert _accuracy(mlp, digits[2], digits[3]) > 0.9


def test_lowrank_sparse_beats_baselines_at_equal_params(mlp, digits):
    Xtr, _, Xte, _ = digits
    calib = Xtr[:1000]
    W0, b0 = mlp[2].weight.detach().clone(), mlp[2].bias.detach().clone()
    with torch.no_grad():
        h_cal = torch.relu(mlp[0](calib))
        h_test = torch.relu(mlp[0](Xte))
    # equal parameter count for the 256x256 layer: 12288 values (+ 256 bias)
    runs = {
        "lowrank_sparse": dict(rank=16, density=0.0625),
        "rank_only": dict(rank=24),
        "sparse_only": dict(density=0.1875),
    }
    errs, errs_cal = {}, {}
    for method, kw in runs.items():
        new, rep = compress(mlp, calib, method=method, include="2", keep_first_last=False, max_iter=150, **kw)
        mod = new[2]
        assert isinstance(mod, LowRankSparseLinear)
        assert rep.layer("2").params_after == mod.num_params()
        assert abs(mod.num_params() - (12288 + 256)) <= 1, method
        errs[method] = _post_act_error(W0, b0, mod, h_test)
        errs_cal[method] = _post_act_error(W0, b0, mod, h_cal)
        # the report's error is measured on the calibration subsample (all 1000 rows here)
        assert rep.layer("2").output_error_after == pytest.approx(errs_cal[method], rel=1e-4, abs=1e-6)
    print("post-activation error on held-out digits (equal params):", errs)
    assert errs["lowrank_sparse"] < errs["rank_only"]
    assert errs["lowrank_sparse"] < errs["sparse_only"]
    assert errs_cal["lowrank_sparse"] < min(errs_cal["rank_only"], errs_cal["sparse_only"])


def test_untouched_budget_reproduces_the_model_exactly(mlp, digits):
    x = digits[2]
    for kw in (dict(rank=1.0, density=0.0), dict(rank=10_000), dict(density=1.0)):
        new, rep = compress(mlp, digits[0][:200], keep_first_last=False, **kw)
        with torch.no_grad():
            assert torch.equal(new(x), mlp(x))
        assert all(r.status == "untouched" for r in rep.layers)
        assert rep.params_after == rep.params_before


def test_input_model_is_not_modified(mlp, digits):
    state = copy.deepcopy(mlp.state_dict())
    params = [id(p) for p in mlp.parameters()]
    mods = [id(m) for m in mlp.modules()]
    new, _ = compress(mlp, digits[0][:300], rank=0.25, density=0.02, keep_first_last=False, **FAST)
    after = mlp.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [id(p) for p in mlp.parameters()] == params
    assert [id(m) for m in mlp.modules()] == mods
    assert all(isinstance(m, nn.Linear) for m in (mlp[0], mlp[2], mlp[4]))
    assert not any(p is q for p in mlp.parameters() for q in new.parameters())


@pytest.mark.parametrize("fraction", [0.5, 0.25], ids=["params50", "params25"])
def test_accuracy_at_a_fraction_of_the_parameters(fraction, mlp, digits):
    Xtr, _, Xte, yte = digits
    new, rep = compress(mlp, Xtr[:500], target=Budget(params=fraction), allocation="alds",
                        keep_first_last=False, **FAST)
    acc0, acc = _accuracy(mlp, Xte, yte), _accuracy(new, Xte, yte)
    ratio = model_params(new) / model_params(mlp)
    print(f"\nparams {ratio:.3f} of the original: accuracy {acc:.4f} (original {acc0:.4f})\n{rep.table()}")
    assert ratio <= fraction
    assert rep.params_after == model_params(new) and rep.params_ratio == pytest.approx(ratio)
    assert rep.allocation == "alds" and rep.allocation_table
    assert acc > acc0 - (0.03 if fraction == 0.5 else 0.08)


def test_cnn_compresses_and_counts_match_the_modules(cnn, digits):
    Xtr, _, Xte, yte = digits
    calib = Xtr[:100]  # 100 images x 64 pixels: the subsample keeps every conv1 patch
    new, rep = compress(cnn, calib, rank=0.5, density=0.05, keep_first_last=False, progress=False, **FAST)
    assert isinstance(new.conv1, LowRankSparseConv2d) and isinstance(new.conv2, LowRankSparseConv2d)
    assert isinstance(new.fc, LowRankSparseLinear) and isinstance(new.dw, nn.Conv2d)
    assert "depthwise" in rep.skipped["dw"]
    in_hw = {"conv1": (8, 8), "conv2": (8, 8), "fc": None}
    for name, hw in in_hw.items():
        r = rep.layer(name)
        old, mod = getattr(cnn, name), getattr(new, name)
        assert r.params_before == dense_params(old)
        assert r.params_after == mod.num_params()
        assert r.macs_before == dense_macs(old, hw)
        assert r.macs_after == mod.macs(hw)
        assert r.index_bytes == mod.num_index_bytes(packed=True)
    assert rep.layer("conv2").activation.startswith("relu") and "bn2" in rep.layer("conv2").activation
    assert rep.params_before == model_params(cnn) and rep.params_after == model_params(new)
    assert rep.macs_before == model_macs(cnn, (64,)) and rep.macs_after == model_macs(new, (64,))
    assert rep.params_after < rep.params_before
    # conv1's reported error equals the error of the modules' own forward passes
    x = calib.reshape(-1, 1, 8, 8)
    with torch.no_grad():
        ref = torch.relu(cnn.conv1(x)).double()
        out = torch.relu(new.conv1(x)).double()
    err = float(torch.linalg.norm(ref - out) / torch.linalg.norm(ref))
    assert rep.layer("conv1").output_error_after == pytest.approx(err, rel=1e-4, abs=1e-6)
    # conv2 sits before bn2 -> relu: its objective folds the BatchNorm; the reported error
    # equals the error of the modules' forward passes through bn2 and the relu
    with torch.no_grad():
        h = torch.relu(cnn.conv1(x))
        ref = torch.relu(cnn.bn2(cnn.conv2(h))).double()
        out = torch.relu(cnn.bn2(new.conv2(h))).double()
    err2 = float(torch.linalg.norm(ref - out) / torch.linalg.norm(ref))
    assert rep.layer("conv2").output_error_after == pytest.approx(err2, rel=1e-4, abs=1e-6)
    # and the compressed network still classifies
    assert _accuracy(new, Xte, yte) > 0.8


@pytest.mark.parametrize(
    "act,fn,name",
    [(nn.LeakyReLU(0.2), lambda u: F.leaky_relu(u, 0.2), "leaky_relu(0.2)"), (nn.GELU(), F.gelu, "gelu"),
     (nn.Tanh(), torch.tanh, "tanh")],
    ids=["leaky0.2", "gelu", "tanh"],
)
def test_other_activations_reported_errors_are_independent(act, fn, name, digits):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 48), act, nn.Linear(48, 10)).eval()
    x = digits[0][:400]
    new, rep = compress(model, x, rank=8, density=0.05, keep_first_last=False, **FAST)
    with torch.no_grad():
        ref, out = fn(model[0](x)).double(), fn(new[0](x)).double()
    err = float(torch.linalg.norm(ref - out) / torch.linalg.norm(ref))
    assert rep.layer("0").activation.split()[0] == name
    assert rep.layer("0").output_error_after == pytest.approx(err, rel=1e-4, abs=1e-6)
    assert 0 < err < 0.5
    # the last layer has no activation: its error is exact over all rows, from the Gram matrix
    with torch.no_grad():
        y0, y1 = model[2](fn(model[0](x))).double(), new[2](fn(model[0](x))).double()
    assert rep.layer("2").error_on.startswith("gram")
    assert rep.layer("2").output_error_after == pytest.approx(
        float(torch.linalg.norm(y0 - y1) / torch.linalg.norm(y0)), rel=1e-4, abs=1e-6)


def test_selection_and_report_structure(mlp, digits):
    calib = DataLoader(TensorDataset(digits[0][:256], digits[1][:256]), batch_size=64)
    new, rep = compress(mlp, calib, rank=0.25, **FAST)
    assert [r.name for r in rep.layers] == ["2"]
    assert "first layer kept" in rep.skipped["0"] and "last layer kept" in rep.skipped["4"]
    assert isinstance(new[0], nn.Linear) and isinstance(new[2], LowRankSparseLinear)
    assert rep.layer("2").rank == 64 and rep.layer("2").density == 0
    assert rep.calibration["samples"] == 256 and rep.calibration["batches"] == 4
    _, rep2 = compress(mlp, digits[0][:128], rank={"2": 8, "4": 0.5}, keep_first_last=False, exclude="4", **FAST)
    assert [r.status for r in rep2.layers] == ["untouched", "compressed"]
    assert rep2.layer("2").rank == 8 and "exclude" in rep2.skipped["4"]
    assert "2" in rep2.table()


def test_sequential_calibration_runs(mlp, digits):
    # the output layer is kept (rank 0.25 of 10 would be 2): layers 0 and 2 are fitted,
    # layer 2 on the inputs produced by the already compressed layer 0
    new, rep = compress(mlp, digits[0][:300], rank=0.25, keep_first_last=False, exclude="4", sequential=True,
                        **FAST)
    assert [r.status for r in rep.layers] == ["compressed", "compressed"]
    assert rep.calibration["sequential"] is True
    with torch.no_grad():
        h = torch.relu(new[0](digits[0][:300]))  # what layer 2 sees in the compressed net
    err = _post_act_error(mlp[2].weight.detach(), mlp[2].bias.detach(), new[2], h)
    assert rep.layer("2").output_error_after == pytest.approx(err, rel=1e-4, abs=1e-6)
    assert _accuracy(new, digits[2], digits[3]) > 0.9


def test_bad_inputs(mlp, digits):
    x = digits[0][:50]
    with pytest.raises(ValueError, match=r"layer '0'.*\(50, 32\)"):
        compress(mlp, x[:, :32], rank=0.5)
    with pytest.raises(ValueError, match="empty"):
        compress(mlp, DataLoader(TensorDataset(x[:0]), batch_size=8), rank=0.5, keep_first_last=False)
    with pytest.raises(ValueError, match="no compressible layer"):
        compress(nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 3, groups=2)), torch.randn(2, 2, 5, 5), rank=1)
    bad = x.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"layer '0'.*NaN"):
        compress(mlp, bad, rank=0.5, keep_first_last=False)
    with pytest.raises(ValueError, match="method"):
        compress(mlp, x, rank=0.5, method="svd")
    with pytest.raises(ValueError, match="target Budget or an explicit rank"):
        compress(mlp, x)
    with pytest.raises(ValueError, match="rank_only"):
        compress(mlp, x, rank=4, density=0.1, method="rank_only")
    with pytest.raises(ValueError, match=r"layer '2'.*\[0, 1\]"):
        compress(mlp, x, rank=1.5)
    with pytest.raises(ValueError, match=r"layer '2': rank 0 and density 0"):
        compress(mlp, x, rank={"2": 0})
    with pytest.raises(ValueError, match="no layer left"):
        compress(mlp, x, rank=0.5, include="nothing*")
    with pytest.raises(TypeError, match="model"):
        compress("not a model", x, rank=0.5)


def test_budget_run_reuses_the_allocators_solve(mlp, digits, monkeypatch):
    """With a target, the final per-layer solve is the one error_fn already ran for the
    chosen split (no second identical solve), and the reused decomposition gives the same
    model as a fresh compress() at the chosen ranks and densities."""
    import importlib

    M = importlib.import_module("lowrank_sparse.compress.methods")  # every solve goes through solve_layer
    Xtr = digits[0]
    calls: list[tuple[tuple[int, ...], int]] = []
    real = M.solve_layer

    def counting(config, problem):
        calls.append((tuple(problem.weight.shape), int(problem.rank)))
        return real(config, problem)

    monkeypatch.setattr(M, "solve_layer", counting)
    new, rep = compress(mlp, Xtr[:300], target=Budget(params=0.5), allocation="alds", max_iter=20,
                        keep_first_last=False, progress=False)
    monkeypatch.setattr(M, "solve_layer", real)
    compressed = [l for l in rep.layers if l.status == "compressed"]
    assert compressed
    for l in compressed:
        shape = (l.shape[0], int(torch.tensor(l.shape[1:]).prod()))
        assert calls.count((shape, l.rank)) == 1, (l.name, calls)
    again, _ = compress(mlp, Xtr[:300], rank={l.name: l.rank for l in compressed},
                        density={l.name: l.density for l in compressed}, max_iter=20,
                        keep_first_last=False, progress=False)
    x = Xtr[300:400]
    with torch.no_grad():
        assert torch.allclose(new(x), again(x), atol=1e-4)


@pytest.mark.parametrize("sequential", [False, True], ids=["one-pass", "sequential"])
def test_allocator_holds_one_decomposition_per_layer(mlp, digits, monkeypatch, sequential):
    """While the allocator probes several splits per layer, at most one decomposition
    per layer is held (the lowest-error one, the split it picks); under sequential
    calibration none of the layers that are re-fitted on new inputs keeps one."""
    import importlib

    P = importlib.import_module("lowrank_sparse.compress.plan")
    real = P._SolverErrors._record
    seen: list[tuple[str, float, int, set]] = []

    def spying(self, key, dec):
        err = real(self, key, dec)
        per_layer = {}
        for k in self.solved:
            per_layer[k[0]] = per_layer.get(k[0], 0) + 1
        seen.append((key[0], err, max(per_layer.values(), default=0), {k[0] for k in self.solved}))
        if key[0] in {k[0] for k in self.solved}:
            kept = next(k for k in self.solved if k[0] == key[0])
            errs = [e for (n, r, d), e in self.errors.items() if n == key[0]]
            assert self.errors[kept] == min(errs)
        return err

    monkeypatch.setattr(P._SolverErrors, "_record", spying)
    compress(mlp, digits[0][:300], target=Budget(params=0.5), max_iter=10, keep_first_last=False,
             sequential=sequential, progress=False)
    layers = [s[0] for s in seen]
    assert max(layers.count(n) for n in set(layers)) >= 2  # several splits probed per layer
    assert max(s[2] for s in seen) == 1
    first = [n for n, _ in mlp.named_modules() if isinstance(_, nn.Linear)][0]
    held = set().union(*(s[3] for s in seen))
    assert held == ({first} if sequential else set(layers))


@pytest.mark.parametrize("sequential", [False, True], ids=["one-pass", "sequential"])
def test_layer_statistics_are_released_as_layers_finish(mlp, digits, monkeypatch, sequential):
    """Each layer's statistics leave the calibration once the layer is swapped in; under
    sequential calibration the one-pass statistics of all layers but the first are gone
    before the first solve."""
    import importlib

    S = importlib.import_module("lowrank_sparse.compress.schedule")
    real_run, real_finish = S.run_layers, S.finish_layer
    cals, held_at_finish = [], []

    def run(job, selected, plan, cal, *a, **k):
        cals.append(cal)
        return real_run(job, selected, plan, cal, *a, **k)

    def finish(job, name, *a, **k):
        held_at_finish.append((name, set(cals[0].layers)))
        return real_finish(job, name, *a, **k)

    monkeypatch.setattr(S, "finish_layer", finish)
    monkeypatch.setattr(importlib.import_module("lowrank_sparse.compress.pipeline"), "_compress_layers",
                        lambda job, selected, plan, cal, data, opts, progress, ex, ck:
                        run(job, selected, plan, cal, data, opts, ex, ck, None))
    _, rep = compress(mlp, digits[0][:300], rank=0.25, density=0.05, max_iter=5, keep_first_last=False,
                      sequential=sequential, progress=False)
    names = [l.name for l in rep.layers]
    assert len(names) >= 3 and [n for n, _ in held_at_finish] == names
    for i, (name, held) in enumerate(held_at_finish):
        assert held == (({names[0]} if i == 0 else set()) if sequential else set(names[i:]))
    assert cals[0].layers == {}


def test_public_names_survive_submodule_imports():
    """`import lowrank_sparse.compress` (or of any submodule) must not rebind the public
    functions to modules; checked in a fresh interpreter where nothing is cached."""
    import subprocess
    import sys

    code = (
        "import lowrank_sparse.compress, lowrank_sparse.decomposition, lowrank_sparse.baselines\n"
        "import lowrank_sparse as l\n"
        "assert callable(l.compress) and l.compress.__name__ == 'compress', l.compress\n"
        "assert callable(l.decompose) and l.decompose.__name__ == 'decompose', l.decompose\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reported_index_bytes_are_what_the_file_stores(cnn, digits, tmp_path):
    from lowrank_sparse import io

    Xtr = digits[0]
    new, rep = compress(cnn, Xtr[:100], rank=0.25, density=0.1, keep_first_last=False, progress=False, **FAST)
    path = tmp_path / "cnn.safetensors"
    io.save(new, path)
    stored = io.file_report(path)["indices"]
    assert rep.index_bytes == sum(r.index_bytes for r in rep.layers) > 0
    assert rep.index_bytes == stored
    # packed indices are smaller than one int32 per kept value
    nnz = sum(int(m.sparse.nnz) for m in new.modules() if getattr(m, "sparse", None) is not None)
    assert stored < 4 * nnz
