"""Knowledge-distillation fine-tuning of a compressed model against its dense original.

* :func:`distill_loss` is the loss of Hinton et al. (2015), "Distilling the Knowledge in
  a Neural Network": ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
  (mean over the batch) ``+ (1 - alpha) * cross_entropy(student, targets)``.
* :func:`distill` fine-tunes a student (a model built by :func:`lowrank_sparse.compress`,
  or any other network) in place against a frozen teacher, with the same recipe for every
  compression method so that their fine-tuned accuracies compare fairly.  It can save a
  checkpoint after every epoch and resume from it.

What trains in a factored layer: the low-rank factors ``U`` / ``V``, the values of the
sparse part S and the biases.  The support of S (its index buffers, see
:mod:`lowrank_sparse.nn.sparse`) is not a parameter, so it never changes.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .io.atomic import atomic_write
from .nn.sparse import CompactSparse
from .train import (
    DataLike,
    _as_loader,
    _augment,
    _check_epoch,
    _check_train_args,
    _model_device,
    _progress,
    has_conv_weights,
    _warmup_cosine,
    resolve_device,
)

__all__ = ["distill", "distill_loss", "DistillEpoch", "DistillHistory", "decay_groups"]

#: Learning-rate schedules of :func:`distill` (per optimizer step).
SCHEDULES = ("cosine", "constant")

#: Version of the checkpoint layout written by :func:`distill`.
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- loss


def _check_loss_args(student: Tensor, teacher: Tensor, targets: Tensor, temperature: float, alpha: float) -> None:
    if not isinstance(student, Tensor) or not isinstance(teacher, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("student_logits, teacher_logits and targets must be tensors")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if student.dim() != 2:
        raise ValueError(f"student_logits must be (N, classes), got shape {tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher.shape)} and student_logits {tuple(student.shape)} must have the same shape"
        )
    if targets.shape != student.shape[:1]:
        raise ValueError(f"targets must be ({student.shape[0]},) class indices, got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")


def _upcast(x: Tensor) -> Tensor:
    """float16 / bfloat16 logits in float32 (softmax and KL are imprecise in half)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl_term(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean over the batch."""
    log_p_student = F.log_softmax(_upcast(student) / temperature, dim=1)
    log_p_teacher = F.log_softmax(_upcast(teacher).detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def _combine(kl: Tensor | None, ce: Tensor | None, alpha: float) -> Tensor:
    """alpha * kl + (1 - alpha) * ce; a term with weight 0 is left out (it may be None)."""
    if alpha == 0.0:
        assert ce is not None
        return ce
    if alpha == 1.0:
        assert kl is not None
        return kl
    assert kl is not None and ce is not None
    return alpha * kl + (1.0 - alpha) * ce


def distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float, alpha: float
) -> Tensor:
    """Distillation loss of Hinton et al. (2015), a scalar tensor.

    ``alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))
    + (1 - alpha) * cross_entropy(student_logits, targets)``, the KL summed over classes
    and averaged over the batch ("batchmean"), the cross-entropy averaged over the batch.
    The factor T^2 keeps the soft term's gradients on the scale of the hard term's as T
    changes.  ``teacher_logits`` are treated as constants (no gradient flows into them).
    Half-precision logits are evaluated in float32.

    Args:
        student_logits: (N, classes).
        teacher_logits: (N, classes), the same shape.
        targets: (N,) integer class labels.
        temperature: T > 0.
        alpha: weight of the soft (teacher) term, in [0, 1]; 0 is plain cross-entropy,
            1 pure distillation (the term with weight 0 is not evaluated).

    Raises:
        ValueError: T <= 0 or not finite, alpha outside [0, 1], shapes that do not match,
            or non-integer targets.
    """
    _check_loss_args(student_logits, teacher_logits, targets, temperature, alpha)
    kl = _kl_term(student_logits, teacher_logits, temperature) if alpha > 0 else None
    ce = F.cross_entropy(_upcast(student_logits), targets) if alpha < 1 else None
    return _combine(kl, ce, alpha)


# ----------------------------------------------------------------------------- history


@dataclass
class DistillEpoch:
    """One epoch of :func:`distill`, means over the epoch's training batches (train mode,
    augmented inputs): ``loss`` (the minimised :func:`distill_loss`), ``kl`` (its
    T^2-scaled KL term), ``cross_entropy`` (its hard-label term), ``train_accuracy``
    (against the labels), ``teacher_agreement`` (fraction of samples where student and
    teacher predict the same class), and wall ``seconds``."""

    epoch: int
    loss: float
    kl: float
    cross_entropy: float
    train_accuracy: float
    teacher_agreement: float
    seconds: float


@dataclass
class DistillHistory:
    """Result of :func:`distill`: one :class:`DistillEpoch` per epoch (those of a resumed
    run included), the wall seconds of this call, and ``resumed_from``, the number of
    epochs loaded from a checkpoint (0 for a fresh run)."""

    epochs: list[DistillEpoch] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0


# ----------------------------------------------------------------------------- parameter groups


def _is_norm(module: nn.Module) -> bool:
    """Normalisation layers: torch's batch / instance / layer / group / RMS norms and
    any class whose name ends in "Norm" (e.g. the RMSNorm classes of language models)."""
    norms: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    if hasattr(nn, "RMSNorm"):
        norms = (*norms, nn.RMSNorm)
    return isinstance(module, norms) or type(module).__name__.endswith("Norm")


def decay_groups(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split the trainable parameters of ``model`` into (decayed, not decayed), each a
    list of (qualified name, parameter) in module order.

    Not decayed: the values of a sparse part S (the ``values`` of a
    :class:`~lowrank_sparse.nn.sparse.CompactSparse` module and of its sub-modules),
    every parameter named ``bias``, and the parameters of normalisation layers (see
    :func:`_is_norm`).  Decayed: everything else, i.e. the low-rank factors ``U`` / ``V``
    and dense weights (kept layers, embeddings).  Shared parameters are listed once;
    parameters with ``requires_grad=False`` are left out.
    """
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    sparse_prefixes = [name for name, mod in model.named_modules() if isinstance(mod, CompactSparse)]
    for mname, module in model.named_modules():
        in_sparse = any(mname == p or mname.startswith(p + ".") for p in sparse_prefixes)
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mname}.{pname}" if mname else pname
            if in_sparse or pname == "bias" or _is_norm(module):
                no_decay.append((name, p))
            else:
                decay.append((name, p))
    return decay, no_decay


def _make_grouped_optimizer(
    groups: tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]],
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """SGD (momentum, L2 decay) or AdamW (decoupled decay) with two parameter groups:
    the decayed one (``weight_decay``) first, then the one without decay."""
    decay, no_decay = groups
    param_groups = [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:
        raise ValueError("student has no trainable parameters")
    if optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(param_groups, lr=lr)


def _make_schedule(opt: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if schedule == "cosine":
        return _warmup_cosine(opt, 0, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


# ----------------------------------------------------------------------------- checkpoint


def _digest(tensors: Iterable[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The distinct generators that drive ``loader``'s order (its own, its sampler's)."""
    gens: list[torch.Generator] = []
    for g in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)):
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def _fingerprint(
    student: nn.Module, teacher: nn.Module, data: DataLike, loader: DataLoader, args: dict[str, Any],
    groups: tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]],
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the arguments, the student's state
    layout (names, shapes, dtypes), its trainable parameters per decay group and the
    support of its sparse parts, the teacher's weights, and the data's size (plus a
    digest of the tensors when ``data`` is an (inputs, labels) pair)."""
    state = student.state_dict()
    sparse_index = [
        t for mod in student.modules() if isinstance(mod, CompactSparse) for t in mod.index_state().values()
    ]
    fp: dict[str, Any] = {
        "arguments": dict(args),
        "student state": [[k, list(v.shape), str(v.dtype)] for k, v in state.items()],
        "student decayed parameters": [n for n, _ in groups[0]],
        "student parameters without decay": [n for n, _ in groups[1]],
        "student sparse support": _digest(sparse_index),
        "teacher weights": _digest(teacher.state_dict().values()),
        "data size": [len(loader.dataset) if hasattr(loader.dataset, "__len__") else None, len(loader)],  # type: ignore[arg-type]
    }
    if isinstance(data, tuple):
        fp["data tensors"] = _digest(data)
    return fp


def _check_fingerprint(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    def short(v: Any) -> str:
        s = repr(v)
        return s if len(s) <= 200 else s[:200] + "..."

    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key == "arguments" and isinstance(a, dict) and isinstance(b, dict):
            diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            if diff:
                parts = ", ".join(f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in diff)
                raise ValueError(f"checkpoint {path} was written with different arguments ({parts}); not resuming")
        elif a != b:
            raise ValueError(
                f"checkpoint {path} was written for a different {key} (checkpoint {short(a)}, now {short(b)}); "
                "not resuming"
            )


def _rng_state(dev: torch.device, loader: DataLoader, aug_gen: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
        "augment": aug_gen.get_state(),
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def _set_rng_state(state: dict[str, Any], dev: torch.device, loader: DataLoader, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if dev.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], dev)
    aug_gen.set_state(state["augment"])
    gens = _loader_generators(loader)
    if len(gens) != len(state["loader"]):
        raise ValueError("the data loader's generators do not match the checkpoint's; not resuming")
    for g, s in zip(gens, state["loader"], strict=True):
        g.set_state(s)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through :func:`lowrank_sparse.io.atomic.atomic_write` (temporary file,
    fsync, rename: a crash leaves the previous checkpoint intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(state, f)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be read as a distill checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a distill checkpoint of format {CHECKPOINT_FORMAT}")
    return ckpt


# ----------------------------------------------------------------------------- distill


def _check_distill_args(
    epochs: int, lr: float, optimizer: str, augment: str | None, weight_decay: float,
    temperature: float, alpha: float, schedule: str, momentum: float,
) -> None:
    _check_train_args(epochs, lr, optimizer, augment, 0.0)
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")


def _is_empty(data: DataLike) -> bool:
    """True for an (inputs, labels) pair or a sized Dataset without samples."""
    if isinstance(data, DataLoader):
        return False
    if isinstance(data, tuple):
        return len(data) == 2 and len(data[0]) == 0
    try:
        return len(data) == 0  # type: ignore[arg-type]
    except TypeError:  # an iterable-style Dataset without a length
        return False


@dataclass
class _Loop:
    """What every epoch of one :func:`distill` call shares."""

    student: nn.Module
    teacher: nn.Module
    loader: DataLoader
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    dev: torch.device
    teacher_dev: torch.device
    temperature: float
    alpha: float
    augment: str | None
    aug_gen: torch.Generator
    channels_last: bool = False


def _distill_epoch(loop: _Loop, batches: Iterable) -> tuple[list[float], int]:
    """One pass, one optimizer and scheduler step per batch.  Returns the sums over the
    samples of (loss, kl, cross-entropy, correct, agreeing) and the samples seen."""
    loop.student.train()
    sums = [0.0] * 5
    seen = 0
    for x, y in batches:
        x = _augment(x.to(loop.dev, non_blocking=True), loop.augment, loop.aug_gen)
        if loop.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(loop.dev, non_blocking=True)
        with torch.no_grad():
            t_logits = loop.teacher(x.to(loop.teacher_dev)).to(loop.dev)
        s_logits = loop.student(x)
        _check_loss_args(s_logits, t_logits, y, loop.temperature, loop.alpha)
        kl = _kl_term(s_logits, t_logits, loop.temperature)
        ce = F.cross_entropy(_upcast(s_logits), y)
        loss = _combine(kl, ce, loop.alpha)
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.opt.step()
        loop.sched.step()
        n = len(y)
        pred = s_logits.detach().argmax(1)
        sums[0] += float(loss.detach()) * n
        sums[1] += float(kl.detach()) * n
        sums[2] += float(ce.detach()) * n
        sums[3] += int((pred == y).sum())
        sums[4] += int((pred == t_logits.argmax(1)).sum())
        seen += n
    return sums, seen


def _saved_run(
    path: Path | None, fingerprint: dict[str, Any] | None, epochs: int,
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists and matches ``fingerprint``, else None.

    Raises:
        ValueError: the checkpoint comes from another run, or holds more than ``epochs``.
    """
    if path is None or not path.exists():
        return None
    saved = _load_checkpoint(path)
    _check_fingerprint(saved["fingerprint"], fingerprint, path)
    if saved["epoch"] > epochs:
        raise ValueError(f"checkpoint {path} holds {saved['epoch']} epochs, more than epochs={epochs}; not resuming")
    return saved


def _restore(loop: _Loop, saved: dict[str, Any], history: DistillHistory) -> int:
    """Load a checkpoint's weights, optimizer, schedule, RNG and history; its epoch."""
    loop.student.load_state_dict(saved["student"])
    loop.opt.load_state_dict(saved["optimizer"])
    loop.sched.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"], loop.dev, loop.loader, loop.aug_gen)
    history.epochs = [DistillEpoch(**e) for e in saved["history"]]
    history.resumed_from = int(saved["epoch"])
    return history.resumed_from


def _checkpoint_state(loop: _Loop, fingerprint: dict[str, Any], history: DistillHistory) -> dict[str, Any]:
    """Everything a resumed run needs, after the last epoch of ``history``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "epoch": len(history.epochs),
        "student": loop.student.state_dict(),
        "optimizer": loop.opt.state_dict(),
        "scheduler": loop.sched.state_dict(),
        "rng": _rng_state(loop.dev, loop.loader, loop.aug_gen),
        "history": [asdict(e) for e in history.epochs],
    }


def _run_epochs(
    loop: _Loop, epochs: int, progress: bool | None, saved: dict[str, Any] | None,
    ckpt_path: Path | None, fingerprint: dict[str, Any] | None,
) -> DistillHistory:
    """Resume from ``saved`` (if any) and train up to ``epochs``, checkpointing each."""
    history = DistillHistory()
    start_epoch = 0 if saved is None else _restore(loop, saved, history)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        bar = _progress(loop.loader, len(loop.loader), f"distill {epoch + 1}/{epochs}", progress)
        sums, seen = _distill_epoch(loop, bar)
        _check_epoch(sums[0], seen, epoch)
        history.epochs.append(DistillEpoch(epoch + 1, *(s / seen for s in sums), time.perf_counter() - t0))
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, _checkpoint_state(loop, fingerprint, history))
    return history


def _run_args(
    lr: float, weight_decay: float, temperature: float, alpha: float, batch_size: int, seed: int,
    schedule: str, optimizer: str, momentum: float, augment: str | None, epochs: int,
) -> dict[str, Any]:
    """The arguments a checkpoint must share with the run that resumes it (``epochs``
    only under a schedule whose shape depends on it)."""
    args: dict[str, Any] = {
        "lr": lr, "weight_decay": weight_decay, "temperature": temperature, "alpha": alpha,
        "batch_size": batch_size, "seed": seed, "schedule": schedule, "optimizer": optimizer,
        "momentum": momentum, "augment": augment,
    }
    if schedule != "constant":
        args["epochs"] = epochs
    return args


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataLike,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    temperature: float = 4.0,
    alpha: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    schedule: str = "cosine",
    optimizer: str = "sgd",
    momentum: float = 0.9,
    augment: str | None = None,
    channels_last: bool | None = None,
) -> DistillHistory:
    """Fine-tune ``student`` in place by knowledge distillation from ``teacher``.

    Like :func:`lowrank_sparse.train.fine_tune`, the student is trained **in place**: it
    is moved to ``device``, its parameters are updated, and it is left in eval mode (pass
    a ``copy.deepcopy`` to keep the original).  The loss is :func:`distill_loss` of the
    student's logits, the teacher's logits on the same (augmented) batch, and the labels.

    The teacher is frozen and never modified: it runs in eval mode under
    ``torch.no_grad()`` on its own device (inputs are moved to it; place it on
    ``device`` for speed), its parameters get no gradients, and its train/eval mode is
    restored on return.

    Trained: every student parameter with ``requires_grad`` -- in a compressed layer the
    low-rank factors ``U`` / ``V``, the values of the sparse part S and the bias.  The
    support of S (its index buffers) is not a parameter and stays fixed.  Weight decay
    applies to the low-rank factors and dense weights only, NOT to the values of S, to
    biases, or to normalisation-layer parameters (see :func:`decay_groups`); it is L2
    decay with SGD and decoupled decay with AdamW.

    Args:
        student: network mapping (B, ...) inputs to (B, classes) logits.
        teacher: the dense original, same inputs and classes.
        data: Dataset of (input, int64 label) pairs, a pair of tensors (inputs (N, ...),
            labels (N,)), or a ready DataLoader (used as is).
        epochs: passes over ``data``.
        lr: peak learning rate.
        weight_decay: decay of the factors and dense weights (see above).
        temperature: T of :func:`distill_loss`.
        alpha: weight of the soft (teacher) term of :func:`distill_loss`.
        batch_size: mini-batch size (ignored for a DataLoader).
        seed: seeds shuffling, augmentation and dropout (the global RNG state is
            restored afterwards).
        device: "cpu", "cuda", ... or None/"auto" (CUDA if available).
        progress: tqdm bar per epoch; None = only on a terminal.
        checkpoint: a file path.  After every epoch the student's state, the optimizer
            and scheduler states, the epoch, the history and the RNG states (global,
            CUDA, augmentation, the data loader's generators) are written to it
            atomically (``torch.save`` to a temporary file, then ``os.replace``).  If the
            file exists, the run resumes after its last epoch and ends with the same
            weights and history (seconds aside) as an uninterrupted run on the same
            device.  The file must come from the same arguments, student layout and
            sparse support, teacher weights (a SHA-256 of its state, computed once per
            call that has a checkpoint) and data size, else ValueError naming the
            mismatch (nothing is loaded).  ``epochs`` counts too under the cosine schedule (its decay depends
            on the total); under "constant" a finished run may be continued with a larger
            ``epochs``.  A checkpoint that already holds ``epochs`` epochs loads the
            weights and returns its history without training.
        schedule: "cosine" (per-step cosine decay from ``lr`` to 0 over the run, no
            warm-up) or "constant".
        optimizer: "sgd" (momentum SGD) or "adamw".
        momentum: SGD momentum.
        augment: None, "crop", "flip" or "crop_flip" (see :func:`lowrank_sparse.train.train`);
            the teacher sees the same augmented batch.
        channels_last: train the student in the channels-last (NHWC) layout and feed
            both models channels-last image batches (the teacher's weights keep their
            layout); None = when the student has convolutions, as
            :func:`lowrank_sparse.train.train` does.  The student ends contiguous.

    Returns:
        DistillHistory with one DistillEpoch per epoch.

    Raises:
        ValueError: invalid arguments, empty data, a student without trainable
            parameters, or a checkpoint that does not match.
        FloatingPointError: the loss diverged.
    """
    _check_distill_args(epochs, lr, optimizer, augment, weight_decay, temperature, alpha, schedule, momentum)
    dev = resolve_device(device)
    if _is_empty(data):
        raise ValueError("data is empty")
    loader = _as_loader(data, batch_size, shuffle=True, seed=seed)
    if len(loader) == 0:
        raise ValueError("data is empty")
    ckpt_path = None if checkpoint is None else Path(checkpoint)
    args = _run_args(lr, weight_decay, temperature, alpha, batch_size, seed, schedule, optimizer, momentum,
                     augment, epochs)
    student.to(dev)
    groups = decay_groups(student)
    fingerprint = None if ckpt_path is None else _fingerprint(student, teacher, data, loader, args, groups)
    saved = _saved_run(ckpt_path, fingerprint, epochs)
    opt = _make_grouped_optimizer(groups, optimizer, lr, momentum, weight_decay)
    loop = _Loop(student, teacher, loader, opt, _make_schedule(opt, schedule, epochs * len(loader)), dev,
                 _model_device(teacher), temperature, alpha, augment, torch.Generator().manual_seed(seed + 1))
    teacher_was_training = teacher.training
    if channels_last is None:
        channels_last = has_conv_weights(student)
    loop.channels_last = bool(channels_last)
    start = time.perf_counter()
    try:
        teacher.eval()
        if loop.channels_last:
            student.to(memory_format=torch.channels_last)
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            history = _run_epochs(loop, epochs, progress, saved, ckpt_path, fingerprint)
    finally:
        teacher.train(teacher_was_training)
        student.to(memory_format=torch.contiguous_format)  # what state dicts and safetensors expect
    student.eval()
    history.seconds = time.perf_counter() - start
    return history
