"""GoogLeNet (Inception v1) in the 32x32-input form used for CIFAR-style data.

The nine Inception modules and their branch widths are those of Szegedy et al.
(2015), Table 1 (3a ... 5b).  For 32x32 inputs the ImageNet stem (7x7/2 conv,
pooling, 3x3 convs) is replaced by a single 3x3 convolution to 192 channels at
full resolution, modules 3a/3b run at 32x32, 4a-4e at 16x16 and 5a/5b at 8x8,
followed by global average pooling and one linear layer (1024 -> classes).
Every convolution is followed by ``BatchNorm2d`` and ``ReLU``; the auxiliary
classifiers of the paper are omitted.

Each Inception module has four branches whose outputs are concatenated:
1x1 conv | 1x1 reduce -> 3x3 | 1x1 reduce -> 5x5 | 3x3 max pool (stride 1) -> 1x1.

``width`` multiplies every channel count (rounded, at least 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .vgg import check_common, init_weights, scaled

# (name, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj); "M" = 3x3/2 max pooling.
INCEPTION_CONFIG: tuple[tuple[str, int, int, int, int, int, int] | str, ...] = (
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    "M",
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    "M",
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)


def conv_bn_relu(cin: int, cout: int, kernel_size: int) -> nn.Sequential:
    """Conv2d (same padding, no bias) -> BatchNorm2d -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Inception(nn.Module):
    """One Inception module: (B, cin, H, W) -> (B, n1 + n3 + n5 + npool, H, W)."""

    def __init__(self, cin: int, n1: int, n3r: int, n3: int, n5r: int, n5: int, npool: int) -> None:
        super().__init__()
        self.branch1 = conv_bn_relu(cin, n1, 1)
        self.branch3 = nn.Sequential(conv_bn_relu(cin, n3r, 1), conv_bn_relu(n3r, n3, 3))
        self.branch5 = nn.Sequential(conv_bn_relu(cin, n5r, 1), conv_bn_relu(n5r, n5, 5))
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1), conv_bn_relu(cin, npool, 1)
        )
        self.out_channels = n1 + n3 + n5 + npool

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the four branches along channels."""
        return torch.cat(
            [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1
        )


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1 for 32x32 inputs: (B, in_channels, 32, 32) -> (B, num_classes).

    Args:
        in_channels: channels of the input images.
        num_classes: number of output logits.
        width: channel multiplier (see module docstring).
        dropout: dropout probability before the final linear layer.

    Submodules: ``stem``, ``inception`` (a ``ModuleDict`` keyed "3a" ... "5b" in
    forward order, with max pooling applied after "3b" and "4e"), ``fc``.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_common(in_channels, num_classes, width)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        stem_out = scaled(192, width)
        self.stem = conv_bn_relu(in_channels, stem_out, 3)
        self.inception = nn.ModuleDict()
        self._pool_after: set[str] = set()
        channels = stem_out
        last = ""
        for item in INCEPTION_CONFIG:
            if isinstance(item, str):
                self._pool_after.add(last)
                continue
            name, *sizes = item
            block = Inception(channels, *(scaled(s, width) for s in sizes))
            self.inception[name] = block
            channels = block.out_channels
            last = name
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes)."""
        x = self.stem(x)
        for name, block in self.inception.items():
            x = block(x)
            if name in self._pool_after:
                x = self.pool(x)
        x = self.avgpool(x).flatten(1)
        return self.fc(self.dropout(x))
