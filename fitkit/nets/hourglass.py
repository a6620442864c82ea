"""Stacked hourglass network (Newell et al., ECCV 2016), at the resolution of its input.

An hourglass of depth ``d`` halves the resolution ``d`` times with max-pooling and doubles it back
with nearest-neighbour upsampling, adding a skip branch at every resolution; all its residual
modules are :class:`~fitkit.nets.blocks.PreActBottleneck` of ``width`` channels. Stacks follow one
another: each ends in a per-pixel prediction, and the next stack starts from the previous one's
input plus 1x1 remaps of its features and of its prediction (intermediate supervision). Unlike the
pose network, there is no downsampling stem: the predictions have the input's size, which must be a
multiple of ``2 ** depth``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fitkit.nets.blocks import PreActBottleneck, conv_bn_relu


class Hourglass(nn.Module):
    """One hourglass of ``depth`` levels.

    Args:
        depth: number of halvings (at least 1).
        width: channels throughout.
    """

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"hourglass depth must be at least 1, got {depth}")
        self.skip = PreActBottleneck(width, width)
        self.down = PreActBottleneck(width, width)
        self.inner: nn.Module = (Hourglass(depth - 1, width) if depth > 1
                                 else PreActBottleneck(width, width))
        self.up = PreActBottleneck(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, width, H, W)`` -> ``(B, width, H, W)``; H and W divisible by ``2 ** depth``."""
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


class StackedHourglass(nn.Module):
    """``stacks`` hourglasses with a prediction head after each.

    Args:
        in_channels: C_in of the input features.
        width: channels inside the hourglasses.
        out_channels: channels of each prediction (2 for a displacement field).
        stacks: number of hourglasses.
        depth: halvings per hourglass.
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, stacks: int = 4,
                 depth: int = 4) -> None:
        super().__init__()
        if stacks < 1:
            raise ValueError(f"need at least one hourglass stack, got {stacks}")
        self.depth = depth
        self.input = PreActBottleneck(in_channels, width)
        self.hourglasses = nn.ModuleList(Hourglass(depth, width) for _ in range(stacks))
        self.features = nn.ModuleList(
            nn.Sequential(PreActBottleneck(width, width), conv_bn_relu(width, width, 1))
            for _ in range(stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(width, out_channels, 1) for _ in range(stacks))
        self.merge_features = nn.ModuleList(
            nn.Conv2d(width, width, 1) for _ in range(stacks - 1)
        )
        self.merge_predictions = nn.ModuleList(
            nn.Conv2d(out_channels, width, 1) for _ in range(stacks - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Predictions of every stack.

        Args:
            x: ``(B, C_in, H, W)``, H and W divisible by ``2 ** depth``.
        Returns:
            ``(S, B, out_channels, H, W)``, stack by stack (the last one is the final prediction).
        """
        step = 2**self.depth
        if x.shape[-2] % step or x.shape[-1] % step:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of {step} "
                             f"(hourglass depth {self.depth})")
        x = self.input(x)
        predictions = []
        for index, (hourglass, features, head) in enumerate(
            zip(self.hourglasses, self.features, self.heads, strict=True)
        ):
            feature = features(hourglass(x))
            prediction = head(feature)
            predictions.append(prediction)
            if index < len(self.merge_features):
                x = x + self.merge_features[index](feature) + self.merge_predictions[index](
                    prediction)
        return torch.stack(predictions)
