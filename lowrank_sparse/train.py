"""Training, evaluation, fine-tuning, and a cache of trained checkpoints.

* :func:`train` trains a model in place (SGD with momentum or AdamW, cosine
  learning-rate decay per step with optional linear warm-up, cross-entropy).
* :func:`evaluate` returns top-1 accuracy.
* :func:`fine_tune` is :func:`train` with defaults suited to recovering accuracy
  after compression (small learning rate, no weight decay, one epoch).
* :func:`get_trained` trains a registry model on a data set once and stores the
  state dict as ``safetensors`` (no pickle) in the cache folder
  ``$LOWRANK_SPARSE_CACHE`` (default ``~/.cache/lowrank_sparse``); later calls load it.

On a CPU shared with other jobs, ``torch.set_num_threads(1)`` often trains these
small networks several times faster than the default (OpenMP barriers stall when
cores are busy); this module never changes the thread count itself.

Schedules for :func:`get_trained` (see :data:`SCHEDULES`):

``"cpu"``
    Minutes per model on 2 CPU cores: ``width=0.25`` (channels / 4, compute / ~16),
    a seeded 10,000-image subset of the training split, 3 epochs, batch 64, SGD
    (momentum 0.9, weight decay 5e-4), cosine decay, no augmentation; the stored
    test accuracy uses 2,000 test images.  GoogLeNet uses ``width=0.125`` and 5,000
    images (it is ~4.5x costlier than VGG-16 at equal width).
``"gpu"``
    Full training meant for one GPU: ``width=1``, all 60,000 training images,
    30 epochs, batch 128, SGD, cosine decay with one warm-up epoch, random 2-pixel
    shifts (plus horizontal flips on Fashion-MNIST); test accuracy on the full
    10,000-image test split.  (Expected to take minutes per model on a modern GPU;
    not yet timed in this project.)

AlexNet has no batch normalisation and uses a smaller peak learning rate (0.02 on
the CPU schedule, 0.01 on the GPU one);
SmallCNN keeps ``width=1``; on digits (1,347 training images) both schedules run
30 epochs of batch 32 (seconds).  See :data:`MODEL_OVERRIDES`, :data:`DATASET_OVERRIDES`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from . import data as _data
from .data import cache_dir
from . import models as _models

#: Bump when anything that changes trained weights changes (models, data transform, loop).
CACHE_VERSION = 1

DataLike = Dataset | DataLoader | tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------- helpers


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA if available else CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _as_loader(data: DataLike, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (Dataset, tuple)):
        return _data.loader(data, batch_size, shuffle=shuffle, seed=seed)
    raise TypeError(
        f"data must be a Dataset, a DataLoader or a tuple (inputs, labels), got {type(data).__name__}"
    )


def _progress(iterable: Iterable, total: int, desc: str, progress: bool | None) -> Iterable:
    """tqdm bar; ``progress=None`` shows it only on a terminal, ``False`` never."""
    if progress is False:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, disable=None if progress is None else False)


def _augment(x: Tensor, mode: str | None, gen: torch.Generator) -> Tensor:
    """Random shifts by up to 2 pixels (edge-replicated) and/or horizontal flips.

    x: (B, C, H, W).  ``gen`` is a CPU generator (draws are device-independent)."""
    if mode is None:
        return x
    b, _, h, w = x.shape
    if "crop" in mode:
        pad = 2
        xp = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    if "flip" in mode:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


# ----------------------------------------------------------------------------- train / evaluate


@dataclass
class EpochStats:
    """One epoch of training: mean loss, training accuracy (on the augmented batches,
    in train mode), optional evaluation accuracy, wall seconds."""

    epoch: int
    loss: float
    train_accuracy: float
    eval_accuracy: float | None
    seconds: float


@dataclass
class TrainHistory:
    """Result of :func:`train`: per-epoch stats and total wall seconds."""

    epochs: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0


_OPTIMIZERS = ("sgd", "adamw")
_AUGMENTS = (None, "crop", "flip", "crop_flip")


def train(
    model: nn.Module,
    train_data: DataLike,
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: float = 0.0,
    label_smoothing: float = 0.0,
    augment: str | None = None,
    eval_data: DataLike | None = None,
    progress: bool | None = None,
    channels_last: bool | None = None,
) -> TrainHistory:
    """Train ``model`` in place (it is moved to ``device`` and left in eval mode, its
    parameters in the default contiguous layout).

    Args:
        model: network mapping (B, ...) inputs to (B, classes) logits.
        train_data: Dataset of (input, int64 label) pairs, a pair of tensors
            (inputs (N, ...), labels (N,)), or a ready DataLoader (used as is).
        epochs: passes over ``train_data``.
        lr: peak learning rate; decays per step along a cosine to 0.
        batch_size: mini-batch size (ignored for a DataLoader).
        seed: seeds shuffling, augmentation and dropout (the global RNG state
            is restored afterwards).
        device: "cpu", "cuda", ... or None/"auto" (CUDA if available).
        optimizer: "sgd" (Nesterov-free momentum SGD) or "adamw".
        momentum: SGD momentum.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay, applied to all parameters.
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        label_smoothing: cross-entropy label smoothing.
        augment: None, "crop" (random shifts by <= 2 px), "flip" (horizontal) or "crop_flip";
            meant for (B, C, H, W) image batches.
        eval_data: optional data evaluated after every epoch.
        progress: tqdm bar per epoch; None = only on a terminal.
        channels_last: train in the channels-last (NHWC) layout; None = when the model
            has convolution weights (:func:`has_conv_weights`; on CPU its forward and backward run up to 1.9x
            faster so, measured on the demo CNN; the values are the same up to float
            rounding).

    Returns:
        TrainHistory with one EpochStats per epoch.
    """
    _check_train_args(epochs, lr, optimizer, augment, warmup_epochs)
    dev = resolve_device(device)
    model.to(dev)
    if channels_last is None:
        channels_last = has_conv_weights(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = _as_loader(train_data, batch_size, shuffle=True, seed=seed)
    steps_per_epoch = max(1, len(loader))
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    sched = _warmup_cosine(opt, int(round(warmup_epochs * steps_per_epoch)), epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history = TrainHistory()
    aug_gen = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            bar = _progress(loader, len(loader), f"epoch {epoch + 1}/{epochs}", progress)
            loss_sum, correct, seen = _train_epoch(model, bar, opt, sched, loss_fn, dev, augment, aug_gen)
            _check_epoch(loss_sum, seen, epoch)
            eval_acc = evaluate(model, eval_data, device=dev) if eval_data is not None else None
            history.epochs.append(
                EpochStats(epoch + 1, loss_sum / seen, correct / seen, eval_acc, time.perf_counter() - t0)
            )
    model.to(memory_format=torch.contiguous_format)  # what state dicts and safetensors expect
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def has_conv_weights(model: nn.Module) -> bool:
    """Whether ``model`` holds convolution weights (4-D parameters: ``nn.Conv2d`` and the
    factors of compressed convolutions), the models that train faster channels-last."""
    return any(p.dim() == 4 for p in model.parameters())


def _check_train_args(
    epochs: int, lr: float, optimizer: str, augment: str | None, warmup_epochs: float
) -> None:
    """Raise ValueError for an invalid argument of :func:`train`."""
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    if augment not in _AUGMENTS:
        raise ValueError(f"augment must be one of {_AUGMENTS}, got {augment!r}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")


def _make_optimizer(
    model: nn.Module, optimizer: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _warmup_cosine(
    opt: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _train_epoch(
    model: nn.Module,
    batches: Iterable,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    loss_fn: nn.Module,
    dev: torch.device,
    augment: str | None,
    aug_gen: torch.Generator,
) -> tuple[float, int, int]:
    """One pass in train mode, one optimizer and scheduler step per batch.

    Returns (sum of per-sample losses, correct predictions, samples seen)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches:
        x = _augment(x.to(dev, non_blocking=True), augment, aug_gen)
        y = y.to(dev, non_blocking=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
    return loss_sum, correct, seen


def _check_epoch(loss_sum: float, seen: int, epoch: int) -> None:
    """Raise if the epoch saw no data or its loss is not finite (``epoch`` counts from 0)."""
    if seen == 0:
        raise ValueError("train_data is empty")
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"training diverged in epoch {epoch + 1} (loss is not finite)")


@torch.no_grad()
def predict(
    model: nn.Module, data: DataLike, batch_size: int = 512, device: str | torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Logits and labels over ``data`` in eval mode: (float (N, classes), int64 (N,)), on CPU.

    The model's train/eval mode is restored afterwards; ``device`` defaults to the
    model's device (the model itself is not moved; inputs are)."""
    dev = _model_device(model) if device is None else resolve_device(device)
    loader = _as_loader(data, batch_size, shuffle=False, seed=0)
    was_training = model.training
    model.eval()
    try:
        outs, labels = [], []
        for x, y in loader:
            outs.append(model(x.to(dev)).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("data is empty")
    return torch.cat(outs), torch.cat(labels)


def evaluate(
    model: nn.Module, data: DataLike, batch_size: int = 512, device: str | torch.device | None = None
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``data`` (see :func:`predict`)."""
    logits, labels = predict(model, data, batch_size, device)
    return float((logits.argmax(1) == labels).float().mean())


def fine_tune(
    model: nn.Module,
    data: DataLike,
    epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    **kwargs: object,
) -> TrainHistory:
    """Briefly retrain a (compressed) model in place: :func:`train` with a small learning
    rate, no weight decay and no warm-up unless overridden through ``kwargs``.  All
    parameters with ``requires_grad`` are updated (freeze some to keep them fixed)."""
    kwargs.setdefault("weight_decay", 0.0)
    return train(model, data, epochs, lr, batch_size, seed, device, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- checkpoint cache


@dataclass(frozen=True)
class Schedule:
    """Recipe used by :func:`get_trained`.

    Attributes:
        width: channel multiplier of the 32x32 models (ignored by "mlp").
        subset: number of training images (None = all), a seeded subset.
        epochs, lr, batch_size, optimizer, weight_decay, warmup_epochs: see :func:`train`.
        augment: per data set augmentation for :func:`train` (missing = None).
        test_subset: number of test images for the stored accuracy (None = the full
            test split), a seeded subset.
    """

    width: float
    subset: int | None
    epochs: int
    lr: float
    batch_size: int = 128
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    augment: tuple[tuple[str, str], ...] = ()
    test_subset: int | None = None


SCHEDULES: dict[str, Schedule] = {
    "cpu": Schedule(width=0.25, subset=10_000, epochs=3, lr=0.05, batch_size=64, test_subset=2_000),
    "gpu": Schedule(
        width=1.0,
        subset=None,
        epochs=30,
        lr=0.05,
        warmup_epochs=1.0,
        augment=(("fashion_mnist", "crop_flip"), ("mnist", "crop"), ("digits", "")),
    ),
}
#: Per-schedule, per-model changes.  AlexNet has no batch norm: smaller learning rate.
#: GoogLeNet costs ~4.5x VGG-16 per image at equal width (Inception 3a/3b run at
#: 32x32), so its CPU recipe halves the width again and uses 5,000 images.
#: SmallCNN is the demo's model: ``width=2`` (32-64-128 channels), so that its
#: compressible convolutions take most of its time and a compressed model can run
#: faster, and 30,000 images (76 s on 2 idle cores, channels-last training; 88.0 % on
#: 2,000 test images).  Width 1 trained in 27 s but its thin convolutions run
#: memory-bound, factored or not (1.15x at best).
MODEL_OVERRIDES: dict[str, dict[str, dict[str, object]]] = {
    "cpu": {"alexnet": {"lr": 0.02}, "googlenet": {"width": 0.125, "subset": 5_000},
            "small_cnn": {"width": 2.0, "subset": 30_000}},
    "gpu": {"alexnet": {"lr": 0.01}, "small_cnn": {"width": 1.0}},
}
#: Per-data-set changes, applied before the model ones: digits has only 1,347
#: training images (seconds per epoch), so both schedules run 30 epochs of batch 32.
DATASET_OVERRIDES: dict[str, dict[str, object]] = {
    "digits": {"epochs": 30, "batch_size": 32, "warmup_epochs": 0.0},
}
#: Models that need 32x32 inputs (five 2x poolings or fixed-size classifiers).
_NEEDS_32 = {"vgg16", "alexnet", "googlenet"}


def _recipe(name: str, dataset: str, schedule: str | Schedule) -> tuple[dict[str, object], Schedule]:
    if not isinstance(schedule, Schedule) and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)} or a Schedule, got {schedule!r}")
    if name not in _models.list_models() or name == "mobilenet_v2":
        allowed = [m for m in _models.list_models() if m != "mobilenet_v2"]
        raise ValueError(
            f"get_trained supports models {allowed}, got {name!r} "
            "(use models.pretrained_mobilenet_v2() for ImageNet MobileNetV2)"
        )
    if dataset not in _data.DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; available: {sorted(_data.DATASETS)}")
    info = _data.DATASETS[dataset]
    if name in _NEEDS_32 and info.input_size != 32:
        raise ValueError(f"model {name!r} needs 32x32 inputs; data set {dataset!r} is {info.input_size}x{info.input_size}")
    if isinstance(schedule, Schedule):
        sched = schedule
    else:
        sched = dataclasses.replace(SCHEDULES[schedule], **DATASET_OVERRIDES.get(dataset, {}))  # type: ignore[arg-type]
        sched = dataclasses.replace(sched, **MODEL_OVERRIDES[schedule].get(name, {}))  # type: ignore[arg-type]
    kwargs: dict[str, object] = {"num_classes": info.num_classes}
    if name == "mlp":
        kwargs["in_features"] = info.in_channels * info.input_size**2
    else:
        kwargs["in_channels"] = info.in_channels
        kwargs["width"] = sched.width
    return kwargs, sched


def checkpoint_path(name: str, dataset: str, schedule: str | Schedule = "cpu", seed: int = 0) -> Path:
    """Where :func:`get_trained` stores this checkpoint.  The file name carries a hash
    of the recipe (model arguments, schedule, cache version), so changing a recipe
    never loads stale weights."""
    kwargs, sched = _recipe(name, dataset, schedule)
    recipe = json.dumps(
        {"v": CACHE_VERSION, "kwargs": kwargs, "schedule": dataclasses.asdict(sched)}, sort_keys=True
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    label = "custom" if isinstance(schedule, Schedule) else schedule
    return cache_dir() / f"{name}-{dataset}-{label}-seed{seed}-{digest}.safetensors"


def checkpoint_info(
    name: str, dataset: str, schedule: str | Schedule = "cpu", seed: int = 0
) -> dict[str, str] | None:
    """Metadata stored with a cached checkpoint (test_accuracy, train_seconds, model,
    kwargs, ...), or None when it has not been trained yet."""
    path = checkpoint_path(name, dataset, schedule, seed)
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _subset(dataset: str, split: str, n: int | None, seed: int) -> Dataset:
    """``data.load`` with a seeded subset of ``n`` items, or all when ``n`` is None or too big."""
    full = _data.load(dataset, split)
    if n is None or n >= len(full):
        return full
    return _data.load(dataset, split, subset=n, seed=seed)


def get_trained(
    name: str,
    dataset: str = "fashion_mnist",
    schedule: str | Schedule = "cpu",
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """A registry model trained on ``dataset`` with ``schedule``, from the cache if present.

    The first call trains (see :data:`SCHEDULES`), measures test accuracy on the full
    test split, and writes the state dict with ``safetensors`` (atomically) to
    :func:`checkpoint_path`; later calls only load it.  Returns the model on CPU in
    eval mode.

    Args:
        name: "vgg16", "alexnet", "googlenet" (32x32 data sets), "small_cnn" or "mlp".
        dataset: "fashion_mnist", "mnist" or "digits".
        schedule: "cpu", "gpu" (with the per-model :data:`MODEL_OVERRIDES`) or a
            :class:`Schedule` used as is (cached under the name "custom").
        seed: seeds initialisation, subset choice, shuffling and augmentation.
        device: where to train (None = CUDA if available).
        progress: tqdm bars; None = only on a terminal.
    """
    from safetensors.torch import load_file, save_file

    kwargs, sched = _recipe(name, dataset, schedule)
    path = checkpoint_path(name, dataset, schedule, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _models.build(name, **kwargs)
    if path.is_file():
        model.load_state_dict(load_file(str(path)), strict=True)
        return model.eval()

    train_set = _subset(dataset, "train", sched.subset, seed)
    test_set = _subset(dataset, "test", sched.test_subset, seed)
    augment = dict(sched.augment).get(dataset) or None
    history = train(
        model,
        train_set,
        epochs=sched.epochs,
        lr=sched.lr,
        batch_size=sched.batch_size,
        seed=seed,
        device=device,
        optimizer=sched.optimizer,
        weight_decay=sched.weight_decay,
        warmup_epochs=sched.warmup_epochs,
        augment=augment,
        progress=progress,
    )
    accuracy = evaluate(model, test_set)
    model.cpu().eval()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "model": name,
        "kwargs": json.dumps(kwargs, sort_keys=True),
        "dataset": dataset,
        "schedule": schedule if isinstance(schedule, str) else "custom",
        "recipe": json.dumps(dataclasses.asdict(sched), sort_keys=True),
        "seed": str(seed),
        "test_accuracy": f"{accuracy:.6f}",
        "test_images": str(len(test_set)),
        "train_seconds": f"{history.seconds:.1f}",
        "final_train_loss": f"{history.epochs[-1].loss:.6f}" if history.epochs else "nan",
        "cache_version": str(CACHE_VERSION),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return model
