"""Choose among compressed candidates of one network by a cheap post-fine-tune proxy.

The per-layer allocator picks each layer's rank / sparse split on the error it can
measure before fine-tuning.  What a user keeps is the model *after* fine-tuning, and a
split that is best before it need not be best after it (a sparse-only model often
recovers more from a short fine-tune).  :func:`choose_by_proxy` measures that directly:
each candidate (say, the L + S model and the sparse-only model at the same budget) is
copied, briefly distilled from the dense teacher on a small training subset
(:func:`lowrank_sparse.distill.distill`, the same recipe, seed and data for every
candidate), and scored by its KL divergence to the teacher on held-out inputs that the
short fine-tune never saw::

    proxy(c) = mean over held-out x of KL(softmax(teacher(x)) || softmax(student_c(x)))   [nats]

The candidate with the smallest proxy wins (ties: the first given).  Held-out KL rather
than held-out accuracy: it is continuous, so a few hundred inputs separate candidates
whose accuracies tie.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .distill import _kl_term, distill
from .train import DataLike, _model_device, resolve_device

__all__ = ["ProxyChoice", "choose_by_proxy", "heldout_kl"]


@dataclass
class ProxyChoice:
    """Result of :func:`choose_by_proxy`.

    Attributes:
        best: name of the candidate with the smallest held-out KL after the short fine-tune.
        kl_before: {name: held-out KL to the teacher before fine-tuning} (nats).
        kl_after: {name: held-out KL after the short fine-tune} (nats).
        models: {name: the fine-tuned copy} (the candidates themselves are not changed).
        seconds: wall time of the whole choice.
    """

    best: str
    kl_before: dict[str, float]
    kl_after: dict[str, float]
    models: dict[str, nn.Module] = field(repr=False)
    seconds: float


@torch.no_grad()
def heldout_kl(student: nn.Module, teacher: nn.Module, inputs: Tensor, batch_size: int = 256) -> float:
    """Mean over the rows of ``inputs`` of KL(softmax(teacher) || softmax(student)), in nats.

    Both models run in eval mode on their own devices (their modes are restored).

    Args:
        inputs: (N, ...) held-out inputs, N >= 1.
    """
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    s_dev, t_dev = _model_device(student), _model_device(teacher)
    total = 0.0
    try:
        for x in inputs.split(batch_size):
            t_logits = teacher(x.to(t_dev)).double().cpu()
            s_logits = student(x.to(s_dev)).double().cpu()
            total += float(_kl_term(s_logits, t_logits, 1.0)) * len(x)  # batch mean -> sum
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return total / len(inputs)


def _check(candidates: Mapping[str, nn.Module], heldout: Tensor) -> None:
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty mapping {name: model}")
    for name, model in candidates.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"candidate {name!r} is a {type(model).__name__}, not an nn.Module")
    if not isinstance(heldout, Tensor) or heldout.dim() < 1 or len(heldout) == 0:
        raise ValueError("heldout must be a tensor of at least one input, (N, ...)")


def choose_by_proxy(
    candidates: Mapping[str, nn.Module],
    teacher: nn.Module,
    train: DataLike,
    heldout: Tensor,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    **distill_kwargs: object,
) -> ProxyChoice:
    """Pick the candidate whose short distillation leaves it closest to the teacher.

    Every candidate is deep-copied and fine-tuned by :func:`~lowrank_sparse.distill.distill`
    with the same arguments (``epochs``, ``lr``, ``batch_size``, ``seed``, and
    ``distill_kwargs`` such as ``temperature``), then scored by :func:`heldout_kl` on
    ``heldout``.  Pass a small training subset as ``train`` (hundreds to a few thousand
    samples) and inputs disjoint from it as ``heldout``; the proxy's cost is that of
    ``epochs`` passes over ``train`` per candidate.

    Args:
        candidates: {name: compressed model}, in order of preference on ties.
        teacher: the dense original (frozen; not modified).
        train: (inputs, labels) pair, Dataset or DataLoader for the short fine-tune.
        heldout: (N, ...) inputs for the score.

    Returns:
        ProxyChoice; its ``models`` are the fine-tuned copies (the candidates are unchanged).

    Raises:
        ValueError / TypeError: no candidates, a candidate that is not a module, empty
            held-out inputs, or any argument :func:`distill` refuses.
        FloatingPointError: a fine-tune diverged or a KL is not finite.
    """
    _check(candidates, heldout)
    start = time.perf_counter()
    dev = resolve_device(device)
    before, after, tuned = {}, {}, {}
    for name, model in candidates.items():
        before[name] = heldout_kl(model, teacher, heldout)
        student = copy.deepcopy(model)
        distill(student, teacher, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=dev,
                progress=False, **distill_kwargs)  # type: ignore[arg-type]
        after[name] = heldout_kl(student, teacher, heldout)
        if not math.isfinite(after[name]):
            raise FloatingPointError(f"candidate {name!r}: held-out KL is {after[name]} after the fine-tune")
        tuned[name] = student
    best = min(after, key=lambda n: after[n])  # min keeps the first of equal values
    return ProxyChoice(best, before, after, tuned, time.perf_counter() - start)
