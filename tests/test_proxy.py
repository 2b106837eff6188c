"""lowrank_sparse.proxy: choosing among compressed candidates by held-out KL after a short
distillation, checked against a plain KL formula and planted candidates."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from digits_fixtures import digits_mlp_teacher, digits_split  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse.compress import compress
from lowrank_sparse.proxy import choose_by_proxy, heldout_kl

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn")


def _ref_kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    """mean_i sum_c p_t (log p_t - log p_s), from explicit exp / log of float64 logits."""
    with torch.no_grad():
        zt, zs = teacher(x).double(), student(x).double()
    pt = torch.exp(zt - zt.max(1, keepdim=True).values)
    pt = pt / pt.sum(1, keepdim=True)
    ps = torch.exp(zs - zs.max(1, keepdim=True).values)
    ps = ps / ps.sum(1, keepdim=True)
    return float((pt * (torch.log(pt) - torch.log(ps))).sum(1).mean())


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def teacher(digits):
    return digits_mlp_teacher(digits[0], digits[1])


@pytest.fixture(scope="module")
def candidates(teacher, digits):
    """L + S and sparse-only at the same low budget (every layer compressed)."""
    kw = dict(keep_first_last=False, progress=False, max_iter=30)
    ls, _ = compress(teacher, digits[0][:512], rank=0.1, density=0.05, **kw)
    sp, _ = compress(teacher, digits[0][:512], rank=0, density=0.12, **kw)
    return {"lowrank_sparse": ls, "sparse_only": sp}


@pytest.mark.parametrize("batch_size", [7, 256], ids=["small-batches", "one-batch"])
def test_heldout_kl_matches_the_formula(teacher, candidates, digits, batch_size):
    x = digits[2]
    got = heldout_kl(candidates["sparse_only"], teacher, x, batch_size=batch_size)
    assert got == pytest.approx(_ref_kl(candidates["sparse_only"], teacher, x), rel=1e-9, abs=1e-12)
    assert heldout_kl(teacher, teacher, x) == pytest.approx(0.0, abs=1e-12)


def test_choice_is_the_smallest_reported_kl_and_candidates_are_unchanged(teacher, candidates, digits):
    Xtr, ytr, Xte, _ = digits
    states = {n: copy.deepcopy(m.state_dict()) for n, m in candidates.items()}
    t_state = copy.deepcopy(teacher.state_dict())
    res = choose_by_proxy(candidates, teacher, (Xtr[:400], ytr[:400]), Xte, epochs=2, lr=0.01, seed=1)
    for name, m in candidates.items():
        assert all(torch.equal(v, states[name][k]) for k, v in m.state_dict().items()), name
    assert all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items())
    assert res.best == min(res.kl_after, key=res.kl_after.get)
    for name in candidates:
        # the reported scores are those of the returned models, by the plain formula
        assert res.kl_after[name] == pytest.approx(_ref_kl(res.models[name], teacher, Xte), rel=1e-9)
        assert res.kl_before[name] == pytest.approx(_ref_kl(candidates[name], teacher, Xte), rel=1e-9)
        assert res.kl_after[name] < res.kl_before[name], "the short distillation must move towards the teacher"


def test_a_planted_copy_of_the_teacher_wins(teacher, candidates, digits):
    Xtr, ytr, Xte, _ = digits
    noisy = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * p.std())
    res = choose_by_proxy({"noisy": noisy, "copy": copy.deepcopy(teacher), **candidates}, teacher,
                          (Xtr[:200], ytr[:200]), Xte, epochs=1, lr=1e-4, alpha=1.0)
    assert res.best == "copy"
    assert res.kl_before["copy"] == pytest.approx(0.0, abs=1e-12)


def test_ties_keep_the_first_candidate(teacher, digits):
    Xtr, ytr, Xte, _ = digits
    a, b = copy.deepcopy(teacher), copy.deepcopy(teacher)
    res = choose_by_proxy({"b": b, "a": a}, teacher, (Xtr[:128], ytr[:128]), Xte, epochs=1, seed=0)
    assert res.kl_after["a"] == res.kl_after["b"] and res.best == "b"


@pytest.mark.parametrize(
    "cands, heldout, exc, match",
    [({}, "ok", ValueError, "non-empty mapping"),
     ([nn.Linear(64, 10)], "ok", ValueError, "non-empty mapping"),
     ({"x": "model"}, "ok", TypeError, "candidate 'x' is a str"),
     ({"x": "teacher"}, torch.empty(0, 64), ValueError, "heldout"),
     ({"x": "teacher"}, [1.0, 2.0], ValueError, "heldout")],
    ids=["empty", "not-a-mapping", "not-a-module", "empty-heldout", "heldout-not-tensor"],
)
def test_bad_input_is_named(teacher, digits, cands, heldout, exc, match):
    Xtr, ytr, Xte, _ = digits
    cands = {k: (copy.deepcopy(teacher) if v == "teacher" else v) for k, v in cands.items()} if isinstance(cands, dict) else cands
    with pytest.raises(exc, match=match):
        choose_by_proxy(cands, teacher, (Xtr[:64], ytr[:64]), Xte if isinstance(heldout, str) else heldout)


def test_bad_distill_argument_is_refused(teacher, digits):
    Xtr, ytr, Xte, _ = digits
    with pytest.raises(ValueError, match="temperature"):
        choose_by_proxy({"a": copy.deepcopy(teacher)}, teacher, (Xtr[:64], ytr[:64]), Xte, temperature=-1.0)
