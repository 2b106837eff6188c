"""What the subcommands measure on a model: accuracy, fidelity to a reference model,
parameters and MACs, and CPU latency (median wall time of forward passes)."""

from __future__ import annotations

import statistics
import time
from typing import Any

__all__ = ["accuracy", "fidelity", "summary", "latency_ms", "paired_calls", "paired_latency", "seeded_batch"]


def accuracy(model: Any, x: Any, y: Any) -> float:
    """Top-1 accuracy of ``model`` on inputs ``x`` (N, C, H, W) with labels ``y`` (N,)."""
    from .. import train as _train

    return _train.evaluate(model, (x, y))


def fidelity(model: Any, reference: Any, x: Any) -> dict[str, float]:
    """Top-1 agreement and mean KL(reference || model) of the softmax outputs."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        a = reference(x).float()
        b = model(x).float()
    agree = float((a.argmax(1) == b.argmax(1)).float().mean())
    kl = float(F.kl_div(F.log_softmax(b, 1), F.log_softmax(a, 1), log_target=True, reduction="batchmean"))
    return {"top1_agreement": agree, "kl": kl}


def summary(model: Any, shape: tuple[int, ...]) -> dict[str, int]:
    """{"params": stored parameters, "macs": multiply-accumulates per sample of input
    ``shape`` (C, H, W)}."""
    from ..nn import counts

    return {"params": int(counts.model_params(model)), "macs": int(counts.model_macs(model, shape))}


def seeded_batch(shape: tuple[int, ...], batch: int) -> Any:
    import torch

    return torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(0))


def latency_ms(model: Any, shape: tuple[int, ...], batch: int, runs: int = 30) -> float:
    """Median wall time (ms) of one forward pass on a batch, CPU, no grad."""
    import torch

    x = seeded_batch(shape, batch)
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def paired_latency(a: Any, b: Any, shape: tuple[int, ...], batch: int, runs: int = 20) -> dict[str, float]:
    """Forward time of two models on the same batch, CPU, no grad, measured in ``runs``
    interleaved rounds (the order alternates each round) so that machine load affects
    both alike.

    Returns: ms_a, ms_b (medians), iqr_a, iqr_b ([q1, q3] widths, ms), ratio (median
    of the per-round ratios b / a), ratio_q1, ratio_q3, runs.
    """
    import torch

    x = seeded_batch(shape, batch)
    a.eval()
    b.eval()
    with torch.inference_mode():
        return paired_calls(lambda: a(x), lambda: b(x), runs=runs)


def paired_calls(call_a: Any, call_b: Any, runs: int = 20, warmup: int = 2) -> dict[str, float]:
    """Wall time of two zero-argument calls in ``runs`` interleaved rounds (the order
    alternates each round), after ``warmup`` calls of each; the keys of
    :func:`paired_latency`.  Runs under no-grad inference mode."""
    import torch

    ta: list[float] = []
    tb: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            call_a()
            call_b()
        for r in range(runs):
            pairs = ((call_a, ta), (call_b, tb)) if r % 2 == 0 else ((call_b, tb), (call_a, ta))
            for call, acc in pairs:
                t0 = time.perf_counter()
                call()
                acc.append((time.perf_counter() - t0) * 1e3)
    ratios = [y / x_ for x_, y in zip(ta, tb)]
    qa, qb, qr = (statistics.quantiles(v, n=4) for v in (ta, tb, ratios))
    return dict(ms_a=statistics.median(ta), ms_b=statistics.median(tb), iqr_a=qa[2] - qa[0], iqr_b=qb[2] - qb[0],
                ratio=statistics.median(ratios), ratio_q1=qr[0], ratio_q3=qr[2], runs=runs)

