"""Shaded mesh pictures and overlays: what a person looks at to judge a fit.

Lambertian shading of the normal map under a light at the camera plus a softer one from above,
composited over a background image (or a flat colour). Everything is batched and stays in torch;
turning the result into a PNG is :func:`fitkit.render.shade.to_uint8` plus Pillow.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fitkit.geometry.camera import Camera
from fitkit.render.maps import interpolate, normal_map
from fitkit.render.rasterize import rasterize

_LIGHTS = ((0.0, 0.0, -1.0, 0.75), (0.0, -0.7, -0.7, 0.35))
"""Directions towards each light in the camera frame (y down) and their strengths."""


def shade(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    image_size: tuple[int, int] | None = None,
    color: tuple[float, float, float] | Tensor = (0.72, 0.78, 0.92),
    background: Tensor | None = None,
    alpha: float = 1.0,
    ambient: float = 0.2,
    backend: str = "torch",
) -> Tensor:
    """Render meshes with simple shading, optionally over background images.

    Args:
        vertices: ``(B, V, 3)`` camera-frame vertices; faces: ``(F, 3)``.
        camera: B cameras (or one). image_size: ``(H, W)``, default the camera's.
        color: the mesh's RGB in [0, 1], or ``(B, V, 3)`` per-vertex colours.
        background: ``(B, H, W, 3)`` or ``(H, W, 3)`` images in [0, 1]; default white.
        alpha: opacity of the mesh over the background.
        ambient: light that reaches every visible point.
        backend: rasterizer backend.
    Returns:
        ``(B, H, W, 3)`` RGB images in [0, 1].
    """
    fragments = rasterize(vertices, faces, camera, image_size, backend=backend)
    normals = normal_map(vertices, faces, fragments)
    light = torch.zeros_like(normals[..., 0]) + ambient
    for x, y, z, strength in _LIGHTS:
        direction = torch.tensor([x, y, z], dtype=normals.dtype, device=normals.device)
        direction = direction / direction.norm()
        light = light + strength * (normals @ direction).clamp(min=0)
    if isinstance(color, Tensor) and color.ndim == 3:
        albedo = interpolate(color.to(normals), faces.to(normals.device), fragments)
    else:
        albedo = torch.as_tensor(color, dtype=normals.dtype, device=normals.device)
        albedo = albedo.expand_as(normals)
    rgb = (albedo * light[..., None]).clamp(0, 1)
    if background is None:
        background = torch.ones_like(rgb)
    background = background.to(rgb).expand_as(rgb)
    weight = alpha * fragments.mask[..., None].to(rgb.dtype)
    return rgb * weight + background * (1 - weight)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """``(..., 3)`` HSV in [0, 1] -> ``(..., 3)`` RGB in [0, 1]."""
    h, s, v = hsv.unbind(-1)
    k = torch.stack([torch.full_like(h, n) for n in (5.0, 3.0, 1.0)], -1)
    k = (k + h[..., None] * 6.0) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v[..., None] - v[..., None] * s[..., None] * ramp


def flow_colors(field: Tensor, mask: Tensor | None = None, scale: float | None = None,
                background: float = 1.0) -> Tensor:
    """Colour-code displacement fields: hue = direction, saturation = length, white = none.

    Directions: ``+u`` (right) red, ``+v`` (down) yellow-green, ``-u`` cyan, ``-v`` violet.

    Args:
        field: ``(B, 2, H, W)`` displacements ``(du, dv)``.
        mask: ``(B, H, W)`` bool; pixels outside get ``background``.
        scale: the length drawn fully saturated; default the largest length in ``field``.
        background: grey level of masked-out pixels.
    Returns:
        ``(B, H, W, 3)`` RGB in [0, 1].
    """
    du, dv = field[:, 0], field[:, 1]
    length = torch.sqrt(du.square() + dv.square())
    if scale is None:
        scale = float(length.max()) if length.numel() else 1.0
    hue = (torch.atan2(dv, du) / (2.0 * torch.pi)) % 1.0
    saturation = (length / max(scale, 1e-9)).clamp(0.0, 1.0)
    rgb = hsv_to_rgb(torch.stack([hue, saturation, torch.ones_like(hue)], dim=-1))
    if mask is not None:
        rgb = torch.where(mask[..., None], rgb, torch.full_like(rgb, background))
    return rgb


def to_uint8(images: Tensor) -> Tensor:
    """``(..., H, W, 3)`` float images in [0, 1] → uint8 on the CPU, ready for ``PIL.Image``."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def grid(images: Tensor, columns: int, pad: int = 4, fill: float = 1.0) -> Tensor:
    """Tile ``(N, H, W, 3)`` images, ``columns`` a row, into one ``(H', W', 3)`` image."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    out = torch.full(
        (rows * (h + pad) + pad, columns * (w + pad) + pad, c), fill, dtype=images.dtype
    )
    for index in range(n):
        r, col = divmod(index, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        out[top : top + h, left : left + w] = images[index].to(out.device)
    return out
