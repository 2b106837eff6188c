"""Input batches from the forms calibration data comes in."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Union

import torch

__all__ = ["CalibrationData", "iter_batches"]

CalibrationData = Union[torch.Tensor, Iterable[Any]]

_DICT_KEYS = ("input", "inputs", "x", "image", "images")


def _input_of(item: Any, i: int) -> torch.Tensor:
    x = item
    if isinstance(item, (tuple, list)):
        if not item:
            raise TypeError(f"calibration batch {i} is an empty {type(item).__name__}")
        x = item[0]
    elif isinstance(item, dict):
        for key in _DICT_KEYS:
            if key in item:
                x = item[key]
                break
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"calibration batch {i}: expected a tensor input, got {type(x).__name__}")
    return x


def iter_batches(data: CalibrationData, batch_size: int = 128) -> Iterator[torch.Tensor]:
    """Input batches from calibration data.

    Args:
        data: a tensor (split along dim 0 into ``batch_size`` rows), a list / tuple
            of tensors or of (x, y, ...) tuples, a ``DataLoader`` or any iterable of
            those.  Only the inputs (first element of a tuple / list) are used; a dict
            batch uses its "input" / "inputs" / "x" / "image" / "images" key.
        batch_size: rows per batch when ``data`` is a single tensor.

    Raises:
        TypeError: an item that is not a tensor (or a tuple starting with one).
        ValueError: a 0-d tensor.
    """
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError("calibration data is a 0-d tensor; expected a batch of inputs")
        for start in range(0, data.shape[0], batch_size):
            yield data[start:start + batch_size]
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            f"calibration data must be a tensor, a list of tensors / (x, y) tuples or a DataLoader, "
            f"got {type(data).__name__}"
        )
    for i, item in enumerate(data):
        yield _input_of(item, i)
