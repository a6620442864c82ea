"""Convolutional building blocks: ResNet bottlenecks, the stride-1 ResNet stem and first stage.

All blocks keep the spatial size of their input (stride 1, "same" padding); they map
``(B, C_in, H, W)`` to ``(B, C_out, H, W)``.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (stride 1, same padding, no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """ResNet's bottleneck (post-activation): 1x1 -> 3x3 -> 1x1 convolutions with BatchNorm and
    ReLU, added to the input (through a 1x1 conv + BatchNorm when the channels change), then ReLU.

    Args:
        in_channels: C_in.
        mid_channels: channels of the 3x3 convolution (ResNet-50's first stage: 64).
        out_channels: C_out (ResNet: ``4 * mid_channels``).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, mid_channels, 1),
            conv_bn_relu(mid_channels, mid_channels, 3),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``."""
        return self.relu(self.body(x) + self.shortcut(x))


class PreActBottleneck(nn.Module):
    """The stacked-hourglass residual module (pre-activation bottleneck): BN -> ReLU -> 1x1
    (``out/2`` channels) -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1, added to the input (through a
    1x1 conv when the channels change).

    Args:
        in_channels: C_in.
        out_channels: C_out; the inner convolutions use ``max(out_channels // 2, 1)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1),
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``."""
        return self.body(x) + self.shortcut(x)


class StageOneEncoder(nn.Module):
    """ResNet-50's stem and first stage at stride 1 without max-pooling (seed 003, §3.1).

    A 7x7 convolution with ``width // 4`` channels, BatchNorm and ReLU, then ``num_blocks``
    bottlenecks with ``width // 4`` inner and ``width`` output channels. ResNet-50 itself is
    ``width=256, num_blocks=3``, with strides 2 in the stem and a max-pool that are left out here,
    so the features keep the input's resolution.

    Args:
        in_channels: C_in (3 for an image, 10 for the renders).
        width: C_out.
        num_blocks: bottlenecks after the stem.
    """

    def __init__(self, in_channels: int, width: int, num_blocks: int = 3) -> None:
        super().__init__()
        if width % 4 or width < 4:
            raise ValueError(f"encoder width must be a positive multiple of 4, got {width}")
        if num_blocks < 1:
            raise ValueError(f"the encoder needs at least one bottleneck, got {num_blocks}")
        mid = width // 4
        blocks = [Bottleneck(mid if i == 0 else width, mid, width) for i in range(num_blocks)]
        self.layers = nn.Sequential(conv_bn_relu(in_channels, mid, 7), *blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, width, H, W)``."""
        return self.layers(x)
