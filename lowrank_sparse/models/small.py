"""Small networks for fast tests and demos: an MLP and a compact CNN.

Both use ``nn.ReLU`` modules directly after each linear layer / batch norm, so the
activation that follows a weight layer can be found by module order.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .vgg import check_common, init_weights, scaled


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear.

    Args:
        in_features: flattened input size, e.g. 64 for 8x8 digits, 1024 for 1x32x32.
        num_classes: number of output logits.
        hidden: hidden layer sizes.

    Input (B, ...) with prod(...) == in_features -> logits (B, num_classes).
    Submodules: ``layers`` (a ``Sequential`` starting with ``Flatten``).
    """

    def __init__(self, in_features: int = 1024, num_classes: int = 10, hidden: Sequence[int] = (256, 128)):
        super().__init__()
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if any((not isinstance(h, int)) or h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive ints, got {tuple(hidden)!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        size = in_features
        for h in hidden:
            layers += [nn.Linear(size, h), nn.ReLU()]
            size = h
        layers.append(nn.Linear(size, num_classes))
        self.layers = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, ...) -> (B, num_classes)."""
        return self.layers(x)


class SmallCNN(nn.Module):
    """Compact CNN for 8x8 ... 32x32 inputs.

    conv3x3(c) -> BN -> ReLU -> conv3x3(2c) -> BN -> ReLU -> 2x2 max pool ->
    conv3x3(4c) -> BN -> ReLU -> adaptive average pool to 2x2 -> Linear(16c, 4c)
    -> ReLU -> Linear(4c, num_classes), with c = round(16 * width).

    Args:
        in_channels: input channels.
        num_classes: number of output logits.
        width: channel multiplier (c = 16 at ``width=1``).

    Input (B, in_channels, H, W), H, W >= 4 -> logits (B, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        check_common(in_channels, num_classes, width)
        c = scaled(16, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * c),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(16 * c, 4 * c),
            nn.ReLU(),
            nn.Linear(4 * c, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes)."""
        return self.classifier(self.pool(self.features(x)).flatten(1))
