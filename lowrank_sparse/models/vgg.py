"""VGG-16 with batch normalisation, in the 32x32-input form used for CIFAR-style data.

Layout (``width=1``): 13 convolutions (3x3, padding 1, no bias) each followed by
``BatchNorm2d`` and ``ReLU``, with 2x2 max pooling after conv 2, 4, 7, 10 and 13
(channels 64-64 | 128-128 | 256-256-256 | 512-512-512 | 512-512-512), so a 32x32
input leaves the features as (512, 1, 1).  The classifier is three fully connected
layers (512 -> 512 -> 512 -> ``num_classes``) with ``ReLU`` (and optional dropout)
between them: 16 weight layers in all, as in the original VGG-16.

``width`` multiplies every channel count and the classifier's hidden size
(rounded, at least 1), so ``width=0.25`` gives a 16x cheaper network for CPU runs.
"""

from __future__ import annotations

from torch import Tensor, nn

# Numbers: channel counts per conv layer, "M": 2x2 max pooling (Simonyan & Zisserman, config D).
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width)))


def check_common(in_channels: int, num_classes: int, width: float) -> None:
    """Raise ValueError for non-positive ``in_channels`` / ``num_classes`` / ``width``."""
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")


class VGG16(nn.Module):
    """VGG-16-BN for 32x32 inputs.

    Args:
        in_channels: channels of the input images (3 for RGB, 1 for grey).
        num_classes: number of output logits.
        width: channel multiplier (see module docstring).
        dropout: dropout probability after each hidden classifier layer.

    Input (B, in_channels, 32, 32) -> logits (B, num_classes).  Other input sizes
    work when divisible by 32; the features are average-pooled to 1x1 before the
    classifier.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_common(in_channels, num_classes, width)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = scaled(int(item), width)
                layers += [
                    nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes)."""
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))


def init_weights(model: nn.Module) -> None:
    """He-normal (fan_out) convolutions, unit/zero batch norm, PyTorch-default linear weights, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5)
            nn.init.zeros_(m.bias)
