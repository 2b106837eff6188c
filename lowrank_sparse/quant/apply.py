"""Quantize a model's parameters with additive quantization, fine-tune the codebooks, bake.

:func:`quantize_model` returns a copy of the model in which each selected parameter is an
AQ reconstruction ``scale * sum_m codebooks[m, codes[:, m]]`` (flattened, tail padding
dropped, reshaped): the parameter is removed and the owning module reads the attribute from
an :class:`AQWeight` stored in ``module.aq_slots`` (a property on a per-module subclass, the
way ``torch.nn.utils.parametrize`` works, but without its restrictions on attribute names
such as ``values`` and without classes shared between deep copies).  Codes are fixed
buffers, codebooks are ``nn.Parameter`` s, shared by all tensors (``cfg.shared``) or one set
per tensor.  Quantized models cannot be pickled whole (``torch.save(model)``): store them
with :func:`lowrank_sparse.quant.aq_state` + :func:`lowrank_sparse.quant.non_aq_state_dict`.  :func:`fine_tune_codebooks` trains only the
codebooks on a task loss (codes and scales fixed; gradients flow through the gather, no
straight-through estimator is needed).  :func:`bake` writes the final weights as plain
parameters.

Selected parameters: every floating parameter (biases excepted) of modules whose class name
starts with "LowRankSparse" (low-rank factors U, V and the sparse values of the lowrank_sparse
pair modules, including their sparse sub-modules), and with ``which="all"`` also the weights
of plain ``nn.Linear`` / ``nn.Conv1d/2d/3d`` modules.  Biases, normalisation layers and
buffers stay float.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .aq import AQConfig, Split, learn_codebooks, split_tensor

__all__ = [
    "AQWeight",
    "quantize_model",
    "fine_tune_codebooks",
    "bake",
    "aq_entries",
    "codebook_parameters",
]

_WHICH = ("factors+sparse", "all")


class AQWeight(nn.Module):
    """A tensor of ``shape`` = AQ reconstruction from fixed codes and trainable codebooks.

    Args:
        codebooks: (M, K, d) ``nn.Parameter`` (may be shared with other AQWeight modules).
        codes: (n_vectors, M) integer tensor, stored as an int64 buffer.
        scale: per-tensor scale (RMS of the original values).
        shape: shape of the reconstructed tensor.
        numel: number of values (prod(shape)); n_vectors * d = numel + pad.
        pad: zeros appended at the tail before splitting.
        group: name of the codebook set (for storage).
    """

    def __init__(
        self,
        codebooks: nn.Parameter,
        codes: Tensor,
        scale: float,
        shape: tuple[int, ...],
        numel: int,
        pad: int,
        group: str = "shared",
    ) -> None:
        super().__init__()
        if codebooks.dim() != 3:
            raise ValueError(f"codebooks must be (M, K, d), got shape {tuple(codebooks.shape)}")
        M, K, d = codebooks.shape
        if codes.dim() != 2 or codes.shape[1] != M:
            raise ValueError(f"codes must be (n, {M}), got shape {tuple(codes.shape)}")
        if codes.shape[0] * d != numel + pad:
            raise ValueError(f"{codes.shape[0]} vectors of length {d} do not hold {numel} values + {pad} padding")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"codes must lie in [0, {K})")
        self.codebooks = codebooks
        self.register_buffer("codes", codes.to(device=codebooks.device, dtype=torch.int64))
        self.scale = float(scale)
        self.shape = tuple(int(s) for s in shape)
        self.numel_ = int(numel)
        self.pad = int(pad)
        self.group = group

    @property
    def out_dtype(self) -> torch.dtype:
        """dtype of the reconstruction: that of the codebooks (follows ``model.to(dtype)``)."""
        return self.codebooks.dtype

    def value(self) -> Tensor:
        """The reconstructed tensor (``shape``, codebooks' dtype), differentiable w.r.t. codebooks."""
        M = self.codebooks.shape[0]
        idx = torch.arange(M, device=self.codes.device)
        vecs = self.codebooks[idx[None, :], self.codes].sum(dim=1)  # (n, d)
        flat = vecs.reshape(-1)[: self.numel_] * self.scale
        return flat.reshape(self.shape)

    def forward(self) -> Tensor:
        return self.value()

    def extra_repr(self) -> str:
        M, K, d = self.codebooks.shape
        return f"shape={self.shape}, M={M}, K={K}, d={d}, group={self.group!r}"


def _param_slot(model: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    if "." in qualified:
        prefix, name = qualified.rsplit(".", 1)
        return model.get_submodule(prefix), name
    return model, qualified


class _AQSlots(nn.Module):
    """Holds a module's AQWeight objects, one child ``w_<param name>`` per quantized tensor."""


_SLOTS = "aq_slots"


def _aq_property(name: str) -> property:
    key = "w_" + name

    def get(self: nn.Module) -> Tensor:
        return self._modules[_SLOTS]._modules[key].value()

    return property(get, doc=f"AQ reconstruction of {name!r}")


def _attach(module: nn.Module, name: str, q: AQWeight) -> None:
    """Replace parameter ``name`` of ``module`` by the AQ reconstruction ``q`` (in place).

    The parameter is removed, ``q`` is stored as ``module.aq_slots.w_<name>`` and the module's
    class is swapped for a fresh subclass exposing ``name`` as a read-only property (a new
    class per call: classes are never modified, so deep copies of a quantized model, which
    share classes, stay independent).  Works for any attribute name (``torch.nn.utils.
    parametrize`` cannot handle names such as ``values``).
    """
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is parametrized; cannot quantize it")
    slots = module._modules.get(_SLOTS)
    if slots is not None and ("w_" + name) in slots._modules:
        raise ValueError(f"{type(module).__name__}.{name} is already AQ-quantized")
    if not isinstance(module._parameters.get(name), nn.Parameter):
        raise ValueError(f"{type(module).__name__} has no parameter {name!r}")
    if slots is None:
        slots = _AQSlots()
        module.add_module(_SLOTS, slots)
    del module._parameters[name]
    slots.add_module("w_" + name, q)
    cls = type(module)
    base = cls.__dict__.get("_aq_base_class", cls)
    names = [*cls.__dict__.get("_aq_names", ()), name]
    body: dict[str, Any] = {"_aq_base_class": base, "_aq_names": tuple(names), "__module__": base.__module__}
    body.update({n: _aq_property(n) for n in names})
    module.__class__ = type(base.__name__, (base,), body)


def _select(model: nn.Module, which: str) -> list[str]:
    """Qualified names of the parameters quantize_model replaces."""
    names: list[str] = []
    seen: set[str] = set()
    inside_pair: set[str] = set()
    for mname, mod in model.named_modules():
        if type(mod).__name__.startswith("LowRankSparse"):
            for sub, _ in mod.named_modules():
                inside_pair.add(f"{mname}.{sub}" if mname and sub else (mname or sub))
            for pname, p in mod.named_parameters():
                full = f"{mname}.{pname}" if mname else pname
                if "parametrizations." in pname or pname.rsplit(".", 1)[-1] == "bias" or not p.is_floating_point() or full in seen:
                    continue
                seen.add(full)
                names.append(full)
    if which == "all":
        for mname, mod in model.named_modules():
            if mname in inside_pair:
                continue
            if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(
                mod._parameters.get("weight"), nn.Parameter
            ):
                full = f"{mname}.weight" if mname else "weight"
                if full not in seen:
                    seen.add(full)
                    names.append(full)
    return names


def quantize_model(
    model: nn.Module, cfg: AQConfig, which: str = "factors+sparse", *, history: list[float] | None = None
) -> nn.Module:
    """Return a copy of ``model`` whose selected parameters are AQ reconstructions.

    Args:
        model: any ``nn.Module`` (not modified).
        cfg: AQ settings; ``cfg.shared`` selects one codebook set for all tensors (True) or one
            per tensor (False).
        which: "factors+sparse" (parameters of LowRankSparse* modules, biases excepted) or
            "all" (additionally the weights of plain Linear / Conv layers).
        history: if given, the training error history of the (first) codebook set is appended.

    Returns:
        The quantized copy; see :func:`aq_entries`, :func:`fine_tune_codebooks`, :func:`bake`.
    """
    if not isinstance(cfg, AQConfig):
        raise TypeError(f"cfg must be an AQConfig, got {type(cfg).__name__}")
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    if aq_entries(model)[0]:
        raise ValueError("model is already AQ-quantized")
    names = _select(model, which)
    if not names:
        raise ValueError(f"no parameters selected for quantization (which={which!r})")
    _check_selected(model, names)
    new = copy.deepcopy(model)
    splits: list[tuple[str, np.ndarray, Split, Tensor]] = []
    for n in names:
        mod, attr = _param_slot(new, n)
        p = getattr(mod, attr)
        vecs, sp = split_tensor(p, cfg.d)
        splits.append((n, vecs, sp, p))
    for n, sp, book, codes, group in _learn(splits, cfg, history):
        mod, attr = _param_slot(new, n)
        q = AQWeight(book, torch.from_numpy(codes.astype(np.int64)), sp.scale, sp.shape, sp.numel, sp.pad, group=group)
        _attach(mod, attr, q)
    return new


def _check_selected(model: nn.Module, names: list[str]) -> None:
    """ValueError for a selected parameter that is parametrized or tied to another."""
    ids: dict[int, str] = {}
    for n in names:
        mod, attr = _param_slot(model, n)
        if parametrize.is_parametrized(mod, attr):
            raise ValueError(f"parameter {n!r} is parametrized (torch.nn.utils.parametrize); cannot quantize it")
        p = getattr(mod, attr)
        if id(p) in ids:
            raise ValueError(f"parameters {ids[id(p)]!r} and {n!r} are tied; tied weights are not supported")
        ids[id(p)] = n


def _learn(
    splits: list[tuple[str, np.ndarray, Split, Tensor]], cfg: AQConfig, history: list[float] | None
) -> list[tuple[str, Split, nn.Parameter, np.ndarray, str]]:
    """Learn the codebooks of the split tensors (one shared set, or one per tensor).

    Returns:
        (name, split, codebooks (M, K, d) parameter, codes (n_vectors, M), group) per tensor.
    """
    plan = []
    if cfg.shared:
        allv = np.concatenate([v for _, v, _, _ in splits], axis=0)
        C, codes = learn_codebooks(allv, cfg, history=history)
        device = splits[0][3].device
        book = nn.Parameter(torch.from_numpy(C).to(device=device, dtype=splits[0][3].dtype))
        off = 0
        for n, v, sp, _p in splits:
            plan.append((n, sp, book, codes[off : off + v.shape[0]], "shared"))
            off += v.shape[0]
        return plan
    for i, (n, v, sp, p) in enumerate(splits):
        C, codes = learn_codebooks(v, cfg, history=history if i == 0 else None)
        book = nn.Parameter(torch.from_numpy(C).to(device=p.device, dtype=p.dtype))
        plan.append((n, sp, book, codes, n))
    return plan


def aq_entries(model: nn.Module) -> tuple[list[tuple[str, AQWeight]], dict[int, str]]:
    """The AQ-quantized tensors of a model.

    Returns:
        (entries, groups): entries = [(qualified parameter name, AQWeight)] in module order;
        groups maps id(codebooks Parameter) -> group name.
    """
    entries: list[tuple[str, AQWeight]] = []
    groups: dict[int, str] = {}
    for mname, mod in model.named_modules():
        slots = mod._modules.get(_SLOTS)
        if not isinstance(slots, _AQSlots):
            continue
        for key, q in slots._modules.items():
            if isinstance(q, AQWeight):
                pname = key[2:]
                entries.append((f"{mname}.{pname}" if mname else pname, q))
                groups.setdefault(id(q.codebooks), q.group)
    return entries, groups


def codebook_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The distinct codebook Parameters of a quantized model."""
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for _, q in aq_entries(model)[0]:
        if id(q.codebooks) not in seen:
            seen.add(id(q.codebooks))
            out.append(q.codebooks)
    return out


def fine_tune_codebooks(
    model: nn.Module,
    data: Iterable[tuple[Any, Any]],
    loss: Callable[[Tensor, Any], Tensor],
    epochs: int = 1,
    lr: float = 1e-3,
    *,
    max_steps: int | None = None,
) -> list[float]:
    """Train only the codebooks of a quantized model on a task loss (in place).

    Codes, scales and every other parameter stay fixed (their ``requires_grad`` is switched
    off during training and restored afterwards).  The model runs in eval mode (dropout off,
    normalisation statistics frozen); its previous mode is restored.  Adam optimiser.

    Args:
        model: a model returned by :func:`quantize_model` (modified in place).
        data: re-iterable of (inputs, targets) batches.
        loss: loss(model(inputs), targets) -> scalar tensor.
        epochs: passes over ``data`` (>= 1).
        lr: Adam learning rate (> 0).
        max_steps: optional cap on the total number of optimiser steps.

    Returns:
        mean training loss per epoch (computed on the fly, before each step).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    books = codebook_parameters(model)
    if not books:
        raise ValueError("model has no AQ codebooks (use quantize_model first)")
    book_ids = {id(b) for b in books}
    saved = {id(p): (p, p.requires_grad) for p in model.parameters()}
    was_training = model.training
    opt = torch.optim.Adam(books, lr=lr)
    losses: list[float] = []
    steps = 0
    try:
        for p, _ in saved.values():
            p.requires_grad_(id(p) in book_ids)
        model.eval()
        for _ in range(epochs):
            total, count = 0.0, 0
            for inputs, targets in data:
                opt.zero_grad(set_to_none=True)
                value = loss(model(inputs), targets)
                value.backward()
                opt.step()
                total += float(value.detach())
                count += 1
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            losses.append(total / max(count, 1))
            if max_steps is not None and steps >= max_steps:
                break
    finally:
        for p, rg in saved.values():
            p.requires_grad_(rg)
        model.train(was_training)
    return losses


def bake(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every AQ-quantized tensor by a plain ``nn.Parameter`` holding its current value.

    Args:
        model: a quantized model.
        inplace: modify ``model`` (True) or return a baked deep copy (False).

    Returns:
        The model with float weights equal to the AQ reconstructions.
    """
    out = model if inplace else copy.deepcopy(model)
    for mod in list(out.modules()):
        slots = mod._modules.get(_SLOTS)
        if not isinstance(slots, _AQSlots):
            continue
        with torch.no_grad():
            values = {key[2:]: q.value().detach().clone() for key, q in slots._modules.items()}
        mod.__class__ = type(mod).__dict__.get("_aq_base_class", type(mod))
        del mod._modules[_SLOTS]
        for name, v in values.items():
            mod.register_parameter(name, nn.Parameter(v))
    return out
