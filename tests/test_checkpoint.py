"""compress(checkpoint_dir=...): finished layers written, a rerun resumes bitwise, and a
folder of another run refused (serial executor, no Ray)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn as nn

import lowrank_sparse as lrs
from lowrank_sparse.compress import methods as M
from lowrank_sparse.compress.checkpoint import model_fingerprint
from lowrank_sparse.models import build

_REAL_SOLVE = M.solve_layer
KW = dict(rank=3, density=0.05, max_iter=15, progress=False, keep_first_last=False)


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return build("mlp", in_features=32, hidden=(40, 36, 28), num_classes=10)


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.randn(64, 32, generator=torch.Generator().manual_seed(1))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


class _Interrupt(RuntimeError):
    pass


def _failing_after(k: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the (k+1)-th solve raise; returns the list of solved weight shapes."""
    real = _REAL_SOLVE
    calls: list[str] = []

    def solve(config, problem):
        if len(calls) >= k:
            raise _Interrupt("injected")
        calls.append(str(tuple(problem.weight.shape)))
        return real(config, problem)

    monkeypatch.setattr(M, "solve_layer", solve)
    return calls


def test_fingerprint_is_sha256_of_the_state_and_sees_one_ulp(mlp):
    h = hashlib.sha256()  # the documented definition, written out
    for name, t in sorted(mlp.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().numpy().tobytes())
    assert model_fingerprint(mlp) == h.hexdigest()
    other = build("mlp", in_features=32, hidden=(40, 36, 28), num_classes=10)
    other.load_state_dict(mlp.state_dict())
    assert model_fingerprint(other) == model_fingerprint(mlp)
    with torch.no_grad():
        w = other.layers[1].weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    assert model_fingerprint(other) != model_fingerprint(mlp)


@pytest.mark.parametrize("sequential", [False, True])
def test_interrupted_run_resumes_bitwise(mlp, data, tmp_path, monkeypatch, sequential):
    ref, ref_rep = lrs.compress(mlp, data, sequential=sequential, **KW)
    folder = tmp_path / "ck"
    calls = _failing_after(2, monkeypatch)
    with pytest.raises(_Interrupt):
        lrs.compress(mlp, data, sequential=sequential, checkpoint_dir=folder, **KW)
    assert len(calls) == 2
    done = sorted(p.name for p in (folder / "layers").iterdir())
    assert done == ["layers.1.safetensors", "layers.3.safetensors"]
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    calls = _failing_after(10, monkeypatch)
    new, rep = lrs.compress(mlp, data, sequential=sequential, checkpoint_dir=folder, **KW)
    assert len(calls) == 2  # only the two unfinished layers were solved
    _assert_same(new, ref)
    x = data[:8]
    with torch.no_grad():
        assert torch.equal(new(x), ref(x))
    for a, b in zip(rep.layers, ref_rep.layers):
        assert (a.name, a.rank, a.density, a.iterations, a.output_error_after) == \
               (b.name, b.rank, b.density, b.iterations, b.output_error_after)
    again, _ = lrs.compress(mlp, data, sequential=sequential, checkpoint_dir=folder, **KW)
    assert len(calls) == 2  # everything finished: nothing solved
    _assert_same(again, ref)


def test_manifest_records_the_run(mlp, data, tmp_path):
    folder = tmp_path / "ck"
    lrs.compress(mlp, data, checkpoint_dir=folder, **KW)
    man = json.loads((folder / "manifest.json").read_text())
    assert man["model_fingerprint"] == model_fingerprint(mlp)
    assert man["library_version"] == lrs.__version__
    assert man["method"] == "lowrank_sparse" and man["config"]["rank"] == 3
    assert man["layers"] == ["layers.1", "layers.3", "layers.5", "layers.7"]
    assert man["target"] is None


def test_budget_run_resumes_bitwise(mlp, data, tmp_path, monkeypatch):
    kw = dict(KW, rank=None, density=None)
    target = lrs.Budget(params=0.6)
    ref, _ = lrs.compress(mlp, data, target=target, **kw)
    folder = tmp_path / "ck"
    lrs.compress(mlp, data, target=target, checkpoint_dir=folder, **kw)
    new, _ = lrs.compress(mlp, data, target=target, checkpoint_dir=folder, **kw)
    _assert_same(new, ref)
    with pytest.raises(ValueError, match=r"mismatched fields: target"):
        lrs.compress(mlp, data, target=lrs.Budget(params=0.7), checkpoint_dir=folder, **kw)


def test_mismatched_checkpoint_refused_naming_fields(mlp, data, tmp_path):
    folder = tmp_path / "ck"
    lrs.compress(mlp, data, checkpoint_dir=folder, **KW)
    with pytest.raises(ValueError, match=r"mismatched fields: config \("):
        lrs.compress(mlp, data, checkpoint_dir=folder, **dict(KW, rank=4))
    other = build("mlp", in_features=32, hidden=(40, 36, 28), num_classes=10)
    with pytest.raises(ValueError, match=r"mismatched fields: model_fingerprint"):
        lrs.compress(other, data, checkpoint_dir=folder, **KW)
    with pytest.raises(ValueError, match=r"mismatched fields: config, structure \("):
        lrs.compress(mlp, data, checkpoint_dir=folder, **dict(KW, structure="row"))
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a lowrank_sparse.checkpoint"):
        lrs.compress(mlp, data, checkpoint_dir=folder, **KW)


def test_threads_do_not_enter_the_manifest(mlp, data, tmp_path):
    folder = tmp_path / "ck"
    ref, _ = lrs.compress(mlp, data, checkpoint_dir=folder, **KW)
    new, _ = lrs.compress(mlp, data, checkpoint_dir=folder, solver_options={"threads": 1}, **KW)
    _assert_same(new, ref)


@pytest.mark.parametrize("other", [lrs.Budget(params=0.6, latency=0.5), lrs.Budget(params=0.6, latency=0.4),
                                   lrs.Budget(params=0.6, macs=0.5)], ids=["latency-added", "latency-changed", "macs"])
def test_a_different_latency_or_macs_target_is_refused(mlp, tmp_path, other):
    from lowrank_sparse.compress.checkpoint import Checkpoint, run_manifest

    def manifest(target):
        return run_manifest(mlp, target=target, allocation="alds", method="lowrank_sparse", config=None,
                            structure="unstructured", calibration=None, layers=["layers.1"])

    first = lrs.Budget(params=0.6, latency=0.5) if other.latency == 0.4 else lrs.Budget(params=0.6)
    Checkpoint.open(tmp_path / "ck", manifest(first))
    assert json.loads((tmp_path / "ck" / "manifest.json").read_text())["target"] == first.as_dict()
    with pytest.raises(ValueError, match=r"mismatched fields: target"):
        Checkpoint.open(tmp_path / "ck", manifest(other))
    Checkpoint.open(tmp_path / "ck", manifest(first))  # the same run is accepted
