"""Input batches from the forms calibration data comes in.

A batch is what one forward call of the model gets (:class:`ModelBatch`):

* a tensor: ``model(x)``;
* a tuple / list: ``model(*batch)`` when the model's ``forward`` takes that many
  positional arguments, else ``model(batch[0])`` (the usual ``(inputs, labels)`` pair
  of a DataLoader);
* a dict (any mapping, e.g. a tokenizer's output): ``model(**batch)`` when
  ``forward`` takes those keywords (a Hugging Face model's ``input_ids``,
  ``attention_mask``, ...), else ``model(batch[key])`` for the first of the keys
  "input", "inputs", "x", "image", "images", else ``model(**accepted)`` with the keys
  ``forward`` takes.

An ``attention_mask`` (B, T) among the arguments (by keyword, or bound to that
parameter name of ``forward``) marks the padding positions (0) that calibration
leaves out of every layer's statistics.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Union

import torch
import torch.nn as nn

__all__ = ["CalibrationData", "ModelBatch", "iter_batches", "iter_model_batches"]

CalibrationData = Union[torch.Tensor, Iterable[Any]]

_DICT_KEYS = ("input", "inputs", "x", "image", "images")
#: keyword inputs whose tensor stands for the batch (its shape, its rows)
_PRIMARY_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features") + _DICT_KEYS
_MASK_KEY = "attention_mask"


@dataclass
class ModelBatch:
    """One forward call: ``model(*args, **kwargs)``.

    Attributes:
        args, kwargs: the call's arguments.
        primary: the tensor that stands for the batch: its first dim is the batch size
            B (e.g. ``input_ids`` (B, T)).
        mask: (B, T) bool, True at real tokens, from an ``attention_mask``; None
            when the batch has none.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    primary: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None

    def to(self, device: torch.device) -> "ModelBatch":
        """The batch with every tensor argument (and the mask) on ``device``."""
        mv = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return ModelBatch(tuple(mv(a) for a in self.args), {k: mv(v) for k, v in self.kwargs.items()},
                          mv(self.primary), mv(self.mask))

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


def _positional_capacity(model: Optional[nn.Module]) -> tuple[float, set[str], bool]:
    """(how many positional arguments forward takes, its keyword names, takes **kwargs)."""
    if model is None:
        return 1, set(), False
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return float("inf"), set(), True
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return (float("inf") if var_pos else len(pos)), names, any(p.kind == p.VAR_KEYWORD for p in params)


def _mask_of(model: Optional[nn.Module], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[torch.Tensor]:
    """The (B, T) bool token mask of a call, from its ``attention_mask`` argument."""
    m = kwargs.get(_MASK_KEY)
    if m is None and model is not None and len(args) > 1:
        try:
            m = inspect.signature(model.forward).bind_partial(*args).arguments.get(_MASK_KEY)
        except (TypeError, ValueError):
            m = None
    if not isinstance(m, torch.Tensor) or m.dim() != 2:
        return None
    return m != 0


def _tensor_input(x: Any, i: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"calibration batch {i}: expected a tensor input, got {type(x).__name__}")
    return x


def _check_mask_shape(item: Mapping[str, Any], primary: torch.Tensor, i: int) -> None:
    """A 2-D ``attention_mask`` must be (batch, tokens) of the token input."""
    m = item.get(_MASK_KEY)
    if (isinstance(m, torch.Tensor) and m.dim() == 2 and primary.dim() >= 2
            and tuple(m.shape) != tuple(primary.shape[:2])):
        raise ValueError(f"calibration batch {i}: attention_mask has shape {tuple(m.shape)}, the token input "
                         f"{tuple(primary.shape)}: the mask must be (batch, tokens) = {tuple(primary.shape[:2])}")


def _dict_batch(item: Mapping[str, Any], i: int, model: Optional[nn.Module]) -> ModelBatch:
    _, names, var_kw = _positional_capacity(model)
    primary = next((item[k] for k in _PRIMARY_KEYS if isinstance(item.get(k), torch.Tensor)), None)
    if primary is None:
        primary = next((v for v in item.values() if isinstance(v, torch.Tensor)), item)
    primary = _tensor_input(primary, i)
    if model is None:
        return ModelBatch((primary,), {}, primary)
    _check_mask_shape(item, primary, i)
    if var_kw and names:
        unknown = sorted(k for k, v in item.items() if k not in names and isinstance(v, torch.Tensor))
        if unknown:  # forward(**kwargs) would swallow them silently
            named = ", ".join(sorted(names)[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(f"calibration batch {i}: key(s) {unknown} not arguments of "
                             f"{type(model).__name__}.forward (it names: {named})")
    if var_kw or set(item) <= names:
        return ModelBatch((), dict(item), primary, _mask_of(model, (), item))
    key = next((k for k in _DICT_KEYS if k in item), None)
    if key is not None:
        return ModelBatch((_tensor_input(item[key], i),), {}, primary)
    accepted = {k: v for k, v in item.items() if k in names}
    if not accepted:
        raise TypeError(f"calibration batch {i}: none of its keys {sorted(item)} is an argument of "
                        f"{type(model).__name__}.forward")
    return ModelBatch((), accepted, primary, _mask_of(model, (), accepted))


def to_model_batch(item: Any, i: int, model: Optional[nn.Module] = None) -> ModelBatch:
    """The forward call of one calibration item (see the module doc); ``model`` None:
    the input tensor alone (as :func:`iter_batches` gives it)."""
    if isinstance(item, torch.Tensor):
        return ModelBatch((item,), {}, item)
    if isinstance(item, (tuple, list)):
        if not item:
            raise TypeError(f"calibration batch {i} is an empty {type(item).__name__}")
        first = _tensor_input(item[0], i)
        capacity = _positional_capacity(model)[0]
        if model is not None and 1 < len(item) <= capacity:
            args = tuple(item)
            return ModelBatch(args, {}, first, _mask_of(model, args, {}))
        return ModelBatch((first,), {}, first)
    if isinstance(item, Mapping):
        return _dict_batch(item, i, model)
    raise TypeError(f"calibration batch {i}: expected a tensor input, got {type(item).__name__}")


def iter_model_batches(data: CalibrationData, model: Optional[nn.Module] = None,
                       batch_size: int = 128) -> Iterator[ModelBatch]:
    """The forward calls of calibration data for ``model`` (see the module doc).

    Args:
        data: a tensor (split along dim 0 into ``batch_size`` rows), a list / tuple
            of tensors, tuples or dicts, a ``DataLoader`` or any iterable of those;
            one dict (e.g. a tokenizer's output) is one batch.
        model: the model the batches are for (its ``forward`` signature decides how
            tuples and dicts are passed); None: inputs only.
        batch_size: rows per batch when ``data`` is a single tensor.

    Raises:
        TypeError: an item that is not a tensor (or a tuple / dict holding one).
        ValueError: a 0-d tensor.
    """
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError("calibration data is a 0-d tensor; expected a batch of inputs")
        for start in range(0, data.shape[0], batch_size):
            x = data[start:start + batch_size]
            yield ModelBatch((x,), {}, x)
        return
    if isinstance(data, Mapping):
        yield to_model_batch(data, 0, model)
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            f"calibration data must be a tensor, a list of tensors / (x, y) tuples / dicts or a DataLoader, "
            f"got {type(data).__name__}"
        )
    for i, item in enumerate(data):
        yield to_model_batch(item, i, model)


def iter_batches(data: CalibrationData, batch_size: int = 128) -> Iterator[torch.Tensor]:
    """The input tensor of each calibration batch: the tensor itself, a tuple's first
    element, a dict's ``input_ids`` (or "inputs_embeds", "pixel_values", "input",
    "inputs", "x", "image", "images"; else its first tensor value).

    Args:
        data: as for :func:`iter_model_batches`.
        batch_size: rows per batch when ``data`` is a single tensor.

    Raises:
        TypeError: an item that is not a tensor (or a tuple / dict holding one).
        ValueError: a 0-d tensor.
    """
    for b in iter_model_batches(data, None, batch_size):
        yield b.primary
