"""Tests for lowrank_sparse.distill: the loss against formulas written here in plain torch,
and distillation of a compressed MLP against its dense original on scikit-learn's digits
(teacher untouched, support of S fixed, weight decay groups, resumable checkpoints, and
a lower student-teacher KL on held-out images)."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from digits_fixtures import digits_mlp_teacher, digits_split  # tests/ is on sys.path (pytest rootdir conftest)
from lowrank_sparse import distill as distill_mod
from lowrank_sparse.compress import compress
from lowrank_sparse.distill import decay_groups, distill, distill_loss
from lowrank_sparse.nn import LowRankSparseLinear
from lowrank_sparse.nn.sparse import CompactSparse
from lowrank_sparse.train import fine_tune

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn")


# ----------------------------------------------------------------------------- references


def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax from explicit sums (max-shifted)."""
    zmax = z.max(dim=1, keepdim=True).values
    shifted = z - zmax
    return shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))


def _ref_kl(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * mean over rows of sum_c p_t (log p_t - log p_s), p = softmax(z / T)."""
    lt, ls = _log_softmax(t / T), _log_softmax(s / T)
    return (T * T) * (torch.exp(lt) * (lt - ls)).sum() / s.shape[0]


def _ref_ce(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -_log_softmax(s)[torch.arange(len(y)), y].sum() / len(y)


def _logits(seed: int, n: int = 7, c: int = 5, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_distill_loss_matches_the_formula(T: float, alpha: float) -> None:
    s, t, y = _logits(int(10 * T + 100 * alpha))
    ref = alpha * _ref_kl(s, t, T) + (1 - alpha) * _ref_ce(s, y)
    assert torch.allclose(distill_loss(s, t, y, T, alpha), ref, rtol=1e-12, atol=1e-12)


def test_alpha_zero_is_cross_entropy_and_alpha_one_the_scaled_kl() -> None:
    s, t, y = _logits(3)
    for T in (1.0, 2.0, 8.0):
        assert torch.allclose(distill_loss(s, t, y, T, 0.0), _ref_ce(s, y), rtol=1e-12, atol=0)
        one = distill_loss(s, t, y, T, 1.0)
        assert torch.allclose(one, T * T * (_ref_kl(s, t, T) / (T * T)), rtol=1e-12, atol=0)
    # alpha=0 ignores the teacher entirely, alpha=1 ignores the labels
    assert torch.equal(distill_loss(s, t, y, 4.0, 0.0), distill_loss(s, -t, y, 4.0, 0.0))
    assert torch.equal(distill_loss(s, t, y, 4.0, 1.0), distill_loss(s, t, (y + 1) % 5, 4.0, 1.0))


def test_high_temperature_limit_matches_logit_matching() -> None:
    # Hinton et al.: for T >> |logits|, T^2 KL -> (1 / 2C) sum_c (zs - zt)^2 per sample,
    # with each row's logits centred.
    s, t, y = _logits(5, c=6, scale=1.0)
    T = 1000.0
    d = (s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))
    limit = (d**2).sum() / (2 * s.shape[1]) / s.shape[0]
    assert float(distill_loss(s, t, y, T, 1.0)) == pytest.approx(float(limit), rel=1e-2)


def test_teacher_logits_get_no_gradient() -> None:
    s, t, y = _logits(8)
    s.requires_grad_(True)
    t.requires_grad_(True)
    distill_loss(s, t, y, 2.0, 0.5).backward()
    assert s.grad is not None and t.grad is None


def test_half_precision_logits_are_evaluated_in_float32() -> None:
    s, t, y = _logits(9)
    out = distill_loss(s.bfloat16(), t.bfloat16(), y, 4.0, 0.9)
    ref = 0.9 * _ref_kl(s.bfloat16().double(), t.bfloat16().double(), 4.0) + 0.1 * _ref_ce(s.bfloat16().double(), y)
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(float(ref), rel=1e-5)


_finite = st.floats(-30, 30, allow_nan=False, allow_infinity=False, width=64)


@given(
    rows=st.integers(1, 4),
    cols=st.integers(2, 5),
    data=st.data(),
    T=st.floats(0.1, 20.0),
    alpha=st.floats(0.0, 1.0),
)
def test_distill_loss_properties(rows: int, cols: int, data, T: float, alpha: float) -> None:
    vals = st.lists(_finite, min_size=rows * cols, max_size=rows * cols)
    s = torch.tensor(data.draw(vals), dtype=torch.float64).reshape(rows, cols)
    t = torch.tensor(data.draw(vals), dtype=torch.float64).reshape(rows, cols)
    y = torch.tensor(data.draw(st.lists(st.integers(0, cols - 1), min_size=rows, max_size=rows)))
    kl = float(distill_loss(s, t, y, T, 1.0))
    assert kl >= -1e-9  # KL is non-negative
    assert abs(float(distill_loss(s, s.clone(), y, T, 1.0))) <= 1e-9  # zero when student == teacher
    ce = float(distill_loss(s, t, y, T, 0.0))
    mixed = float(distill_loss(s, t, y, T, alpha))
    assert mixed == pytest.approx(alpha * kl + (1 - alpha) * ce, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=math.nan), "alpha"),
        (dict(teacher=torch.zeros(7, 4)), "same shape"),
        (dict(targets=torch.zeros(6, dtype=torch.long)), "targets"),
        (dict(targets=torch.zeros(7)), "integer"),
        (dict(student=torch.zeros(7), teacher=torch.zeros(7)), r"\(N, classes\)"),
    ],
)
def test_distill_loss_rejects_bad_arguments(kwargs, message) -> None:
    s, t, y = _logits(1)
    args = dict(student=s, teacher=t, targets=y, temperature=4.0, alpha=0.5) | kwargs
    with pytest.raises(ValueError, match=message):
        distill_loss(args["student"], args["teacher"], args["targets"], args["temperature"], args["alpha"])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def teacher(digits):
    """A dense MLP trained here (Adam, 15 epochs), the teacher."""
    return digits_mlp_teacher(digits[0], digits[1])


@pytest.fixture(scope="module")
def compressed(teacher, digits):
    """The teacher compressed to rank 0.25 + 5 % unstructured S in every layer."""
    new, _ = compress(teacher, digits[0], rank=0.25, density=0.05, keep_first_last=False, progress=False,
                      max_iter=30)
    return new


def _pairs(model: nn.Module) -> dict[str, LowRankSparseLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankSparseLinear)}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: nn.Module | dict, b: nn.Module | dict) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _kl_on(student: nn.Module, teacher: nn.Module, X: torch.Tensor) -> float:
    with torch.no_grad():
        return float(_ref_kl(student(X).double(), teacher(X).double(), 1.0))


# ----------------------------------------------------------------------------- distill


def test_compressed_student_has_sparse_and_low_rank_parts(compressed) -> None:
    pairs = _pairs(compressed)
    assert set(pairs) == {"0", "2", "4"}
    assert all(m.rank > 0 and m.sparse is not None and m.sparse.nnz > 0 for m in pairs.values())


def test_teacher_is_never_modified(compressed, teacher, digits) -> None:
    teacher = copy.deepcopy(teacher).train()  # in train mode on entry: must run in eval mode
    before = _state(teacher)
    flags = [p.requires_grad for p in teacher.parameters()]
    modes: list[bool] = []
    handle = teacher.register_forward_hook(lambda mod, inp, out: modes.append(mod.training))
    student = copy.deepcopy(compressed)
    distill(student, teacher, digits[:2], epochs=1, progress=False)
    handle.remove()
    _assert_same_state(teacher, before)
    assert modes and not any(modes)
    assert teacher.training  # its mode is restored
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(p.grad is None for p in teacher.parameters())
    assert not student.training


def test_support_of_s_is_fixed_and_its_values_train(compressed, teacher, digits) -> None:
    student = copy.deepcopy(compressed)
    before = {n: (m.sparse.to_dense().detach().clone(), m.U.detach().clone(), m.V.detach().clone(),
                  {k: v.clone() for k, v in m.sparse.index_state().items()}) for n, m in _pairs(student).items()}
    distill(student, teacher, digits[:2], epochs=2, progress=False)
    for n, m in _pairs(student).items():
        S0, U0, V0, idx0 = before[n]
        S1 = m.sparse.to_dense().detach()
        assert torch.equal(S1.ne(0), S0.ne(0)), n  # the same nonzero pattern
        assert not torch.equal(S1, S0), n  # ... with new values
        assert m.sparse.index_state().keys() == idx0.keys()
        assert all(torch.equal(v, idx0[k]) for k, v in m.sparse.index_state().items()), n
        assert not torch.equal(m.U, U0) and not torch.equal(m.V, V0), n


def test_decay_groups_split_factors_from_values_biases_and_norms(compressed) -> None:
    model = nn.Sequential(copy.deepcopy(compressed[0]), nn.BatchNorm1d(128), nn.ReLU(),
                          copy.deepcopy(compressed[2]), nn.LayerNorm(128), nn.Linear(128, 10))
    decay, no_decay = decay_groups(model)
    assert [n for n, _ in decay] == ["0.U", "0.V", "3.U", "3.V", "5.weight"]
    assert sorted(n for n, _ in no_decay) == sorted([
        "0.bias", "0.sparse.values", "1.weight", "1.bias", "3.bias", "3.sparse.values",
        "4.weight", "4.bias", "5.bias",
    ])
    model[5].weight.requires_grad_(False)
    assert "5.weight" not in [n for n, _ in decay_groups(model)[0]]


def test_weight_decay_reaches_factors_but_not_s_values_or_biases(compressed, digits) -> None:
    # Student == teacher and alpha = 1: the loss gradient vanishes (up to rounding), so one
    # full-batch SGD step is the decay alone: p <- (1 - lr * wd) p for decayed parameters.
    teacher = copy.deepcopy(compressed)
    student = copy.deepcopy(compressed)
    lr, wd = 0.1, 0.5
    X, y = digits[0], digits[1]
    distill(student, teacher, (X, y), epochs=1, lr=lr, weight_decay=wd, alpha=1.0, batch_size=len(X),
            schedule="constant", progress=False)
    decayed = {n for n, _ in decay_groups(student)[0]}
    after = dict(student.named_parameters())
    for name, p0 in teacher.named_parameters():
        if name in decayed:
            assert torch.allclose(after[name], p0 * (1 - lr * wd), rtol=1e-5, atol=1e-7), name
        else:
            assert torch.allclose(after[name], p0, rtol=1e-5, atol=1e-7), name
    assert {n.rsplit(".", 1)[-1] for n in decayed} == {"U", "V"}


def test_alpha_zero_without_decay_is_fine_tune(compressed, teacher, digits) -> None:
    a, b = copy.deepcopy(compressed), copy.deepcopy(compressed)
    ha = distill(a, teacher, digits[:2], epochs=2, lr=0.02, weight_decay=0.0, alpha=0.0, batch_size=64,
                 seed=3, progress=False)
    hb = fine_tune(b, digits[:2], epochs=2, lr=0.02, batch_size=64, seed=3, progress=False)
    # same loader order, dropout seed and per-parameter SGD arithmetic: bitwise equal on CPU
    _assert_same_state(a, b)
    for ea, eb in zip(ha.epochs, hb.epochs, strict=True):
        assert ea.cross_entropy == eb.loss and ea.loss == ea.cross_entropy
        assert ea.train_accuracy == eb.train_accuracy


def test_distillation_lowers_the_kl_to_the_teacher_on_held_out_data(compressed, teacher, digits) -> None:
    Xtr, ytr, Xte, _ = digits
    student = copy.deepcopy(compressed)
    before = _kl_on(student, teacher, Xte)
    hist = distill(student, teacher, (Xtr, ytr), epochs=3, progress=False)
    after = _kl_on(student, teacher, Xte)
    print(f"held-out KL(teacher || student): {before:.4f} -> {after:.4f}")
    assert after < 0.75 * before
    assert len(hist.epochs) == 3 and hist.epochs[-1].loss < hist.epochs[0].loss
    assert hist.resumed_from == 0 and 0 < hist.epochs[-1].teacher_agreement <= 1


def test_distill_rejects_bad_arguments(compressed, teacher, digits) -> None:
    student = copy.deepcopy(compressed)
    before = _state(student)
    for kwargs, message in [
        (dict(temperature=0.0), "temperature"), (dict(alpha=2.0), "alpha"), (dict(schedule="step"), "schedule"),
        (dict(weight_decay=-1.0), "weight_decay"), (dict(lr=0.0), "lr"), (dict(epochs=-1), "epochs"),
        (dict(optimizer="lbfgs"), "optimizer"),
    ]:
        with pytest.raises(ValueError, match=message):
            distill(student, teacher, digits[:2], progress=False, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        distill(student, teacher, (digits[0][:0], digits[1][:0]), progress=False)
    _assert_same_state(student, before)


# ----------------------------------------------------------------------------- checkpoints


class _Killed(Exception):
    pass


def _with_dropout(compressed: nn.Module) -> nn.Module:
    """The student behind input dropout, so that the run draws from the global RNG too."""
    return nn.Sequential(nn.Dropout(0.1), *copy.deepcopy(compressed))


def _same_history(a, b) -> None:
    assert len(a.epochs) == len(b.epochs)
    for ea, eb in zip(a.epochs, b.epochs, strict=True):
        assert (ea.epoch, ea.loss, ea.kl, ea.cross_entropy, ea.train_accuracy, ea.teacher_agreement) == (
            eb.epoch, eb.loss, eb.kl, eb.cross_entropy, eb.train_accuracy, eb.teacher_agreement)


@pytest.mark.parametrize("optimizer, schedule", [("sgd", "cosine"), ("adamw", "constant")])
def test_interrupted_run_resumes_bitwise(compressed, teacher, digits, tmp_path, monkeypatch, optimizer, schedule) -> None:
    kw = dict(epochs=3, batch_size=100, optimizer=optimizer, schedule=schedule, lr=0.01 if optimizer == "sgd" else 1e-3,
              progress=False)
    original = _with_dropout(compressed)
    full = copy.deepcopy(original)
    h_full = distill(full, teacher, digits[:2], **kw)

    path = tmp_path / "run.pt"
    real_save = distill_mod._save_checkpoint

    def save_then_die(p, state):
        real_save(p, state)
        if state["epoch"] == 2:
            raise _Killed

    monkeypatch.setattr(distill_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        distill(copy.deepcopy(original), teacher, digits[:2], checkpoint=path, **kw)
    monkeypatch.setattr(distill_mod, "_save_checkpoint", real_save)
    assert torch.load(path, weights_only=True)["epoch"] == 2

    resumed = copy.deepcopy(original)
    h_res = distill(resumed, teacher, digits[:2], checkpoint=path, **kw)
    assert h_res.resumed_from == 2
    _assert_same_state(resumed, full)
    _same_history(h_res, h_full)
    assert [f for f in os.listdir(tmp_path)] == ["run.pt"]  # no temporary files left

    # a finished checkpoint: the weights are loaded, nothing is trained
    again = copy.deepcopy(original)
    h_again = distill(again, teacher, digits[:2], checkpoint=path, **kw)
    assert h_again.resumed_from == 3
    _assert_same_state(again, full)
    _same_history(h_again, h_full)


def test_constant_schedule_run_can_be_continued_with_more_epochs(compressed, teacher, digits, tmp_path) -> None:
    kw = dict(batch_size=100, schedule="constant", progress=False)
    original = _with_dropout(compressed)
    full = copy.deepcopy(original)
    h_full = distill(full, teacher, digits[:2], epochs=3, **kw)
    path = tmp_path / "c.pt"
    distill(copy.deepcopy(original), teacher, digits[:2], epochs=2, checkpoint=path, **kw)
    resumed = copy.deepcopy(original)
    h_res = distill(resumed, teacher, digits[:2], epochs=3, checkpoint=path, **kw)
    assert h_res.resumed_from == 2
    _assert_same_state(resumed, full)
    _same_history(h_res, h_full)
    with pytest.raises(ValueError, match="holds 3 epochs"):
        distill(copy.deepcopy(original), teacher, digits[:2], epochs=2, checkpoint=path, **kw)


def test_checkpoint_from_different_arguments_or_models_is_refused(compressed, teacher, digits, tmp_path) -> None:
    path = tmp_path / "ck.pt"
    kw = dict(batch_size=200, progress=False)
    distill(copy.deepcopy(compressed), teacher, digits[:2], epochs=1, checkpoint=path, **kw)
    saved = path.read_bytes()
    other_student, _ = compress(teacher, digits[0], rank=0.25, density=0.03, keep_first_last=False,
                                progress=False, max_iter=30)
    other_teacher = copy.deepcopy(teacher)
    with torch.no_grad():
        other_teacher[0].bias.add_(1e-3)
    frozen = copy.deepcopy(compressed)
    frozen[0].bias.requires_grad_(False)
    cases = [
        (dict(), dict(epochs=2), "epochs: checkpoint 1, now 2"),  # cosine: the decay depends on epochs
        (dict(), dict(epochs=1, temperature=2.0), "temperature: checkpoint 4.0, now 2.0"),
        (dict(), dict(epochs=1, seed=1), "seed"),
        (dict(), dict(epochs=1, batch_size=100), "batch_size"),
        (dict(student=other_student), dict(epochs=1), "student"),
        (dict(student=frozen), dict(epochs=1), "student"),
        (dict(teacher=other_teacher), dict(epochs=1), "teacher weights"),
        (dict(data=(digits[0][:1000], digits[1][:1000])), dict(epochs=1), "data"),
    ]
    for models, args, message in cases:
        student = copy.deepcopy(models.get("student", compressed))
        before = _state(student)
        call = kw | args
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            distill(student, models.get("teacher", teacher), models.get("data", digits[:2]), checkpoint=path, **call)
        _assert_same_state(student, before)  # nothing was loaded
    assert path.read_bytes() == saved
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        distill(copy.deepcopy(compressed), teacher, digits[:2], epochs=1, checkpoint=path, **kw)


def test_checkpoint_holds_the_two_decay_groups(compressed, teacher, digits, tmp_path) -> None:
    path = tmp_path / "g.pt"
    student = copy.deepcopy(compressed)
    distill(student, teacher, digits[:2], epochs=1, weight_decay=1e-3, batch_size=400, checkpoint=path,
            progress=False)
    ckpt = torch.load(path, weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    decay, no_decay = decay_groups(student)
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert [len(g["params"]) for g in groups] == [len(decay), len(no_decay)]
    assert sum(isinstance(m, CompactSparse) for m in student.modules()) == 3
    assert sum(n.endswith("sparse.values") for n, _ in no_decay) == 3
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1


@pytest.mark.parametrize("layout", [None, True, False], ids=["auto", "channels_last", "contiguous"])
def test_conv_student_trains_in_the_chosen_layout_and_ends_contiguous(layout) -> None:
    from lowrank_sparse import models
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    torch.manual_seed(0)
    teacher = models.build("small_cnn", in_channels=1, num_classes=10, width=0.5).eval()
    t_state = _state(teacher)
    student, _ = compress(teacher, x[:64], rank=0.5, density=0.05, keep_first_last=False, progress=False, max_iter=10)
    other = copy.deepcopy(student)
    convs = [m for m in student.modules() if isinstance(getattr(m, "V", None), torch.Tensor) and m.V.dim() == 4]
    assert convs and convs[-1].V.shape[1] > 1  # compressed convs; the last has several input channels
    seen = []
    convs[-1].register_forward_pre_hook(
        lambda m, args: seen.append(m.V.is_contiguous(memory_format=torch.channels_last) and not m.V.is_contiguous()
                                    and args[0].is_contiguous(memory_format=torch.channels_last)))
    distill(student, teacher, (x, y), epochs=1, lr=0.02, batch_size=32, seed=0, progress=False, channels_last=layout)
    assert seen and all(v == (layout is not False) for v in seen)
    assert all(v.is_contiguous() for v in student.state_dict().values())
    _assert_same_state(teacher, t_state)
    assert all(v.is_contiguous() for v in teacher.state_dict().values())
    # the other layout reaches the same weights up to float rounding
    distill(other, teacher, (x, y), epochs=1, lr=0.02, batch_size=32, seed=0, progress=False,
            channels_last=layout is False)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, other.state_dict()[k], rtol=1e-3, atol=1e-4)
