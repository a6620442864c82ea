"""Procedural backgrounds: a colour gradient, smooth value noise, random shapes and a lighting
change across the frame, so that a person never stands on a plain colour."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fitkit.render.shade import hsv_to_rgb


def random_background(height: int, width: int, generator: torch.Generator) -> Tensor:
    """One random background image.

    Layers, drawn in this order: a linear gradient between two colours at a random angle; smooth
    value noise at two scales; 3-10 random rectangles and ellipses (flat colour, partly
    transparent); a brightness ramp (a light source off to one side); fine grain.

    Args:
        height, width: image size in pixels.
        generator: CPU generator, the only source of randomness.
    Returns:
        ``(3, H, W)`` float RGB in [0, 1].
    """
    ys = torch.linspace(0.0, 1.0, height)[:, None].expand(height, width)
    xs = torch.linspace(0.0, 1.0, width)[None, :].expand(height, width)

    hsv = torch.rand(2, 3, generator=generator)
    hsv[:, 1] *= 0.6
    hsv[:, 2] = 0.25 + 0.7 * hsv[:, 2]
    colours = hsv_to_rgb(hsv)  # (2, 3)
    angle = 2.0 * math.pi * float(torch.rand((), generator=generator))
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min()).clamp(min=1e-6)
    image = colours[0, :, None, None] * (1.0 - ramp) + colours[1, :, None, None] * ramp

    for cells, strength in ((4, 0.25), (16, 0.12)):
        noise = torch.rand(1, 3, cells, cells, generator=generator) - 0.5
        image = image + strength * F.interpolate(
            noise, size=(height, width), mode="bicubic", align_corners=True
        )[0]

    num_shapes = int(torch.randint(3, 11, (1,), generator=generator))
    shapes = torch.rand(num_shapes, 9, generator=generator)
    for centre_x, centre_y, size_x, size_y, h, s, v, alpha, kind in shapes.tolist():
        half_w, half_h = 0.05 + 0.3 * size_x, 0.05 + 0.3 * size_y
        rows = slice(max(0, int((centre_y - half_h) * (height - 1))),
                     min(height, int((centre_y + half_h) * (height - 1)) + 2))
        cols = slice(max(0, int((centre_x - half_w) * (width - 1))),
                     min(width, int((centre_x + half_w) * (width - 1)) + 2))
        dx = (xs[rows, cols] - centre_x) / half_w
        dy = (ys[rows, cols] - centre_y) / half_h
        if kind < 0.5:
            inside = (dx.abs() <= 1.0) & (dy.abs() <= 1.0)
        else:
            inside = dx**2 + dy**2 <= 1.0
        colour = hsv_to_rgb(torch.tensor([h, 0.7 * s, 0.15 + 0.8 * v]))
        weight = (0.4 + 0.6 * alpha) * inside.float()
        patch = image[:, rows, cols]
        image[:, rows, cols] = patch * (1.0 - weight) + colour[:, None, None] * weight

    light = torch.rand(3, generator=generator)
    light_angle = 2.0 * math.pi * float(light[0])
    light_ramp = (xs - 0.5) * math.cos(light_angle) + (ys - 0.5) * math.sin(light_angle)
    strength, exposure = 0.2 + 0.5 * float(light[1]), 0.7 + 0.5 * float(light[2])
    image = image * (1.0 + strength * light_ramp) * exposure
    image = image + 0.02 * torch.randn(3, height, width, generator=generator)
    return image.clamp(0.0, 1.0)
