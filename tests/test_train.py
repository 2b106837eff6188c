"""Tests for lowrank_sparse.train: training on real digits, evaluation against a hand
computed accuracy, seeding, augmentation, fine-tuning and the checkpoint cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lowrank_sparse import data, models, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models train far faster on one thread (no OpenMP barriers), above all on
    a machine shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    return data.digits("train"), data.digits("test")


def test_small_cnn_learns_real_digits(digits_split) -> None:
    (xtr, ytr), (xte, yte) = digits_split
    torch.manual_seed(0)
    model = models.build("small_cnn", in_channels=1, num_classes=10, width=0.5)
    before = train.evaluate(model, (xte, yte))
    hist = train.train(model, (xtr, ytr), epochs=6, lr=0.05, batch_size=64, seed=0, device="cpu", progress=False)
    acc = train.evaluate(model, (xte, yte))
    assert len(hist.epochs) == 6 and hist.epochs[-1].loss < hist.epochs[0].loss
    assert before < 0.3 and acc > 0.9, (before, acc)
    assert not model.training


def test_mlp_learns_real_fashion_mnist_subset() -> None:
    try:
        tr = data.load("fashion_mnist", "train", subset=3000, seed=0)
        te = data.load("fashion_mnist", "test", subset=1000, seed=0)
    except FileNotFoundError:
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    torch.manual_seed(0)
    model = models.build("mlp", in_features=1024, hidden=(128,))
    train.train(model, tr, epochs=3, lr=1e-3, optimizer="adamw", weight_decay=0.0, seed=0, progress=False)
    assert train.evaluate(model, te) > 0.72  # chance is 0.10


def test_evaluate_matches_hand_computed_accuracy() -> None:
    # Linear layer = identity on 4 features: prediction = argmax of the input row.
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
    x = torch.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]
    y = torch.tensor([0, 1, 2, 0, 0, 1, 3, 3])  # 6 of 8 correct
    model.train()
    assert train.evaluate(model, (x, y), batch_size=3) == pytest.approx(0.75)
    assert model.training  # mode restored
    logits, labels = train.predict(model, (x, y))
    assert torch.equal(logits, x) and torch.equal(labels, y)


def test_training_is_seeded_and_leaves_global_rng_alone(digits_split) -> None:
    (xtr, ytr), _ = digits_split
    xtr, ytr = xtr[:256], ytr[:256]
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = models.build("mlp", in_features=64, hidden=(32,))
        rng_before = torch.get_rng_state()
        train.train(model, (xtr, ytr), epochs=2, lr=0.1, batch_size=32, seed=5, augment="flip", progress=False)
        assert torch.equal(torch.get_rng_state(), rng_before)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("layout", [None, True, False], ids=["auto", "channels_last", "contiguous"])
def test_layout_used_in_training_and_weights_left_contiguous(layout, digits_split) -> None:
    (xtr, ytr), _ = digits_split
    xtr, ytr = xtr[:128], ytr[:128]
    torch.manual_seed(0)
    model = models.build("small_cnn", in_channels=1, num_classes=10, width=0.25)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.features[3].register_forward_pre_hook(
        lambda m, args: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)
                                    and not m.weight.is_contiguous()))
    train.train(model, (xtr, ytr), epochs=1, lr=0.05, batch_size=32, seed=0, device="cpu", progress=False,
                channels_last=layout)
    assert seen and all(v == (layout is not False) for v in seen)
    assert all(v.is_contiguous() for v in model.state_dict().values())
    # the same run in the other layout ends at the same weights up to float rounding
    other = models.build("small_cnn", in_channels=1, num_classes=10, width=0.25)
    other.load_state_dict(start)
    train.train(other, (xtr, ytr), epochs=1, lr=0.05, batch_size=32, seed=0, device="cpu", progress=False,
                channels_last=layout is False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, other.state_dict()[k], rtol=1e-3, atol=1e-4)


def test_augment_crop_is_a_shift_and_flip_mirrors() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = train._augment(x, "crop", g)
    padded = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for b in range(2):
        windows = [padded[b, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)
    flipped = [train._augment(x, "flip", torch.Generator().manual_seed(s)) for s in range(8)]
    for f in flipped:
        for b in range(2):
            assert torch.equal(f[b], x[b]) or torch.equal(f[b], x[b].flip(2))
    assert any(not torch.equal(f, x) for f in flipped)


def test_fine_tune_updates_only_trainable_parameters(digits_split) -> None:
    (xtr, ytr), _ = digits_split
    torch.manual_seed(0)
    model = models.build("mlp", in_features=64, hidden=(32,))
    first = model.layers[1]
    first.weight.requires_grad_(False)
    frozen = first.weight.detach().clone()
    last = model.layers[-1].weight.detach().clone()
    train.fine_tune(model, (xtr[:128], ytr[:128]), epochs=1, lr=0.05, progress=False)
    assert torch.equal(first.weight, frozen)
    assert not torch.equal(model.layers[-1].weight, last)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"epochs": -1}, ValueError),
        ({"lr": 0.0}, ValueError),
        ({"optimizer": "lbfgs"}, ValueError),
        ({"augment": "rotate"}, ValueError),
        ({"train_data": [1, 2, 3]}, TypeError),
    ],
    ids=["neg-epochs", "zero-lr", "bad-optimizer", "bad-augment", "bad-data"],
)
def test_train_rejects_bad_arguments(kwargs: dict, exc: type[Exception]) -> None:
    model = nn.Linear(2, 2)
    args = {"train_data": (torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))} | kwargs
    with pytest.raises(exc):
        train.train(model, progress=False, **args)


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_split) -> None:
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    _, (xte, yte) = digits_split
    path = train.checkpoint_path("mlp", "digits", "cpu", seed=0)
    assert path.parent == tmp_path and not path.exists()
    assert train.checkpoint_info("mlp", "digits", "cpu", 0) is None

    first = train.get_trained("mlp", "digits", "cpu", seed=0, device="cpu", progress=False)
    assert path.is_file()
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind
    info = train.checkpoint_info("mlp", "digits", "cpu", 0)
    assert info is not None and info["model"] == "mlp" and info["dataset"] == "digits"
    acc = float(info["test_accuracy"])
    assert acc == pytest.approx(train.evaluate(first, (xte, yte)), abs=1e-6)
    assert acc > 0.9

    def no_training(*args, **kwargs):
        raise AssertionError("second call must load, not train")

    monkeypatch.setattr(train, "train", no_training)
    second = train.get_trained("mlp", "digits", "cpu", seed=0, progress=False)
    assert not second.training
    with torch.no_grad():
        assert torch.equal(first(xte), second(xte))
    stored = load_file(str(path))
    assert set(stored) == set(first.state_dict())
    assert all(torch.equal(stored[k], v) for k, v in first.state_dict().items())
    # A different seed is a different checkpoint.
    assert train.checkpoint_path("mlp", "digits", "cpu", seed=1) != path


def test_custom_schedule_gets_its_own_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    recipe = train.Schedule(width=0.5, subset=200, epochs=1, lr=0.05, batch_size=50)
    path = train.checkpoint_path("small_cnn", "digits", recipe, seed=0)
    assert path.name.startswith("small_cnn-digits-custom-seed0-")
    assert path != train.checkpoint_path("small_cnn", "digits", "cpu", seed=0)
    assert path != train.checkpoint_path("small_cnn", "digits", train.Schedule(0.5, 200, 2, 0.05, 50), seed=0)
    model = train.get_trained("small_cnn", "digits", recipe, seed=0, device="cpu", progress=False)
    assert path.is_file()
    assert model.classifier[-1].in_features == 4 * 8  # width 0.5 -> c = 8 -> 4c hidden units
    info = train.checkpoint_info("small_cnn", "digits", recipe, 0)
    assert info is not None and info["schedule"] == "custom"


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("vgg16", "digits", "cpu"), ValueError),
        (("mobilenet_v2", "fashion_mnist", "cpu"), ValueError),
        (("small_cnn", "cifar10", "cpu"), ValueError),
        (("small_cnn", "digits", "tpu"), ValueError),
    ],
    ids=["vgg-on-8x8", "mobilenet", "unknown-data", "unknown-schedule"],
)
def test_get_trained_rejects_bad_recipes(args: tuple, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        train.checkpoint_path(*args)


def test_schedule_recipes_are_documented_values() -> None:
    cpu = train.SCHEDULES["cpu"]
    gpu = train.SCHEDULES["gpu"]
    assert (cpu.width, cpu.subset, cpu.epochs) == (0.25, 10_000, 3)
    assert (gpu.width, gpu.subset, gpu.epochs) == (1.0, None, 30)
    kwargs, sched = train._recipe("googlenet", "fashion_mnist", "cpu")
    assert kwargs == {"num_classes": 10, "in_channels": 1, "width": 0.125} and sched.subset == 5000
