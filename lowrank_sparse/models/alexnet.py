"""AlexNet in a 32x32-input form (5 convolutions + 3 fully connected layers).

The channel counts follow the original AlexNet (64, 192, 384, 256, 256 as in the
single-tower variant); kernel sizes and strides are shrunk for 32x32 inputs:

=====  ==========================  ==============
layer  operation                   output (w=1)
=====  ==========================  ==============
conv1  5x5, stride 1, pad 2, ReLU  64 x 32 x 32
pool   3x3 max, stride 2, pad 1    64 x 16 x 16
conv2  5x5, pad 2, ReLU            192 x 16 x 16
pool   3x3 max, stride 2, pad 1    192 x 8 x 8
conv3  3x3, pad 1, ReLU            384 x 8 x 8
conv4  3x3, pad 1, ReLU            256 x 8 x 8
conv5  3x3, pad 1, ReLU            256 x 8 x 8
pool   3x3 max, stride 2, pad 1    256 x 4 x 4
fc6    Linear(4096, hidden), ReLU  hidden
fc7    Linear(hidden, hidden), ReLU hidden
fc8    Linear(hidden, num_classes)  num_classes
=====  ==========================  ==============

Like the original there is no batch normalisation; convolutions have biases.
``width`` multiplies every channel count and ``hidden`` (default 1024 at
``width=1``); dropout (default 0.5, as in AlexNet) precedes fc6 and fc7.
"""

from __future__ import annotations

from torch import Tensor, nn

from .vgg import check_common, init_weights, scaled


class AlexNet(nn.Module):
    """AlexNet for 32x32 inputs: (B, in_channels, 32, 32) -> (B, num_classes).

    Args:
        in_channels: channels of the input images.
        num_classes: number of output logits.
        width: channel multiplier for all convolutions and the hidden FC size.
        hidden: hidden size of fc6/fc7 at ``width=1``.
        dropout: dropout probability before fc6 and fc7.

    Input sizes other than 32 work when divisible by 8; the last feature map is
    adaptively average-pooled to 4x4 before fc6.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        hidden: int = 1024,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_common(in_channels, num_classes, width)
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 192, 384, 256, 256))
        h = scaled(hidden, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * 16, h),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Linear(h, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes)."""
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))
