"""Models and data by name: a built-in model (trained on a real data set and cached, or
from a checkpoint), a file written by :func:`lowrank_sparse.save`, the pretrained
ImageNet MobileNetV2; calibration batches and test splits of the data sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .output import CLIError

__all__ = ["Loaded", "load_model", "input_shape", "evaluation_data", "n_test", "calibration"]


@dataclass
class Loaded:
    """A model ready to compress/evaluate, with where it came from."""

    model: Any
    arch: Optional[dict[str, Any]]  # {"name": built-in name, "kwargs": constructor arguments}, or None
    dataset: str
    source: str  # one human-readable phrase: "pretrained ImageNet weights", a path, ...


def input_shape(dataset: str) -> tuple[int, ...]:
    """(channels, height, width) of one input image of ``dataset``."""
    from .. import data as _data

    if dataset == "imagenet_samples":
        return (3, 224, 224)
    info = _data.DATASETS[dataset]
    return (info.in_channels, info.input_size, info.input_size)


def load_model(spec: str, dataset: str, schedule: str, seed: int, checkpoint: Optional[str],
               progress: Optional[bool]) -> Loaded:
    """A built-in name (trained on ``dataset`` and cached), a checkpoint for a built-in
    architecture, or a file written by lowrank_sparse.save."""
    from .. import models as _models

    path = Path(spec)
    if spec.endswith(".safetensors") and path.exists() and checkpoint is None:
        return _load_saved(path, dataset)
    if spec not in _models.list_models():
        raise CLIError(
            f"model {spec!r} is neither a built-in model ({', '.join(_models.list_models())}) "
            "nor an existing .safetensors file written by lowrank_sparse.save"
        )
    if spec == "mobilenet_v2":
        if dataset != "imagenet_samples":
            raise CLIError("mobilenet_v2 is the ImageNet model: use --dataset imagenet_samples")
        model = _models.pretrained_mobilenet_v2()
        return Loaded(model.eval(), {"name": "mobilenet_v2", "kwargs": {}}, dataset, "pretrained ImageNet weights")
    if dataset == "imagenet_samples":
        raise CLIError(f"data set imagenet_samples needs model mobilenet_v2, not {spec!r}")
    if checkpoint is not None:
        return _load_checkpoint(spec, dataset, schedule, checkpoint)
    return _load_trained(spec, dataset, schedule, seed, progress)


def _load_saved(path: Path, dataset: str) -> Loaded:
    """A compressed (or plain) model saved by lowrank_sparse.save; its recorded data set
    wins over ``dataset``."""
    from .. import io as _io

    model = _io.load(path)
    meta = _io.read_metadata(path)
    return Loaded(model, meta.get("arch"), meta.get("user", {}).get("dataset", dataset), str(path))


def _arch(spec: str, dataset: str, schedule: str) -> dict[str, Any]:
    """The built-in architecture's name and constructor arguments for ``dataset``."""
    from .. import train as _train

    kwargs, _ = _train._recipe(spec, dataset, schedule)
    return {"name": spec, "kwargs": kwargs}


def _load_checkpoint(spec: str, dataset: str, schedule: str, checkpoint: str) -> Loaded:
    """The built-in architecture with the weights of a state dict (.safetensors or .pt)."""
    import torch

    from .. import models as _models

    arch = _arch(spec, dataset, schedule)
    model = _models.build(spec, **arch["kwargs"])
    ck = Path(checkpoint)
    if not ck.is_file():
        raise CLIError(f"checkpoint {checkpoint} does not exist")
    try:
        if ck.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(ck))
        else:
            state = torch.load(str(ck), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - any loading problem is the user's file
        raise CLIError(f"checkpoint {checkpoint} does not fit {spec} ({str(e).splitlines()[0]})") from None
    return Loaded(model.eval(), arch, dataset, str(ck))


def _load_trained(spec: str, dataset: str, schedule: str, seed: int, progress: Optional[bool]) -> Loaded:
    """The built-in model trained on ``dataset`` (from the cache, or trained now and cached)."""
    from .. import train as _train

    arch = _arch(spec, dataset, schedule)
    was_cached = _train.checkpoint_path(spec, dataset, schedule, seed).is_file()
    model = _train.get_trained(spec, dataset, schedule, seed, progress=progress)
    how = "from cache" if was_cached else "trained now, cached"
    return Loaded(model.eval(), arch, dataset, f"trained ({schedule} schedule, seed {seed}, {how})")


def evaluation_data(dataset: str, n: Optional[int], seed: int) -> tuple[Any, Any]:
    """(inputs, labels) of the test split (a seeded subset of n if given)."""
    from .. import data as _data

    if dataset == "imagenet_samples":
        return _data.imagenet_samples()
    ds = _data.load(dataset, "test", subset=n if n is not None and n < n_test(dataset) else None, seed=seed)
    if hasattr(ds, "tensors") and callable(ds.tensors):
        return ds.tensors()
    return ds.tensors  # TensorDataset


def n_test(dataset: str) -> int:
    """Number of images in the test split of ``dataset``."""
    return {"fashion_mnist": 10_000, "mnist": 10_000, "digits": 450}.get(dataset, 20)


def calibration(dataset: str, n: int, seed: int) -> Any:
    """A seeded batch of up to ``n`` training inputs (the ImageNet samples: the first n)."""
    from .. import data as _data

    if dataset == "imagenet_samples":
        x, _ = _data.imagenet_samples()
        return x[:n]
    ds = _data.load(dataset, "train")
    return _data.calibration_batch(ds, min(n, len(ds)), seed=seed)
