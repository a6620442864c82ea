"""Overlay pictures of fits: meshes drawn over their images, side by side for comparison.

``compare(image, {"init": vertices0, "refined": vertices1}, faces, camera)`` gives one row of
panels: the image, then each mesh shaded over it, each panel labelled.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from fitkit.geometry import Camera
from fitkit.render.shade import shade, to_uint8

COLORS: dict[str, tuple[float, float, float]] = {
    "init": (0.95, 0.62, 0.35),
    "refined": (0.55, 0.75, 0.98),
    "gt": (0.55, 0.9, 0.55),
}
"""Mesh colour per panel label (others get the last one)."""

PAD = 4
"""Pixels between panels."""


def overlay(
    image: np.ndarray,
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    color: tuple[float, float, float] = COLORS["refined"],
    alpha: float = 0.75,
) -> np.ndarray:
    """Shade meshes over one image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        vertices: ``(N, V, 3)`` camera-frame vertices (N meshes, each drawn on its own copy).
        faces: ``(F, 3)``; camera: one camera (batch 1) of the image.
        color: the mesh's RGB in [0, 1]; alpha: its opacity.
    Returns:
        ``(N, H, W, 3)`` uint8.
    """
    height, width = image.shape[:2]
    count = vertices.shape[0]
    background = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0
    index = torch.zeros(count, dtype=torch.long)
    cameras = camera.to(vertices.device, torch.float32)[index]
    shaded = shade(vertices.float(), faces.to(vertices.device), cameras, (height, width),
                   color=color, background=background.to(vertices.device), alpha=alpha)
    return to_uint8(shaded).numpy()


def compare(
    image: np.ndarray,
    meshes: Mapping[str, Tensor],
    faces: Tensor,
    camera: Camera,
    label: bool = True,
) -> np.ndarray:
    """The image and each mesh over it, in one row of labelled panels.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        meshes: label -> ``(V, 3)`` camera-frame vertices (e.g. ``init``, ``refined``).
        faces: ``(F, 3)``; camera: one camera (batch 1) of the image.
        label: write the labels in the panels' top-left corners.
    Returns:
        ``(H, (1 + M) * W + M * PAD, 3)`` uint8.
    """
    panels = [image]
    titles = ["image", *meshes]
    for name, vertices in meshes.items():
        color = COLORS.get(name, COLORS["refined"])
        panels.append(overlay(image, vertices[None], faces, camera, color=color)[0])
    height = image.shape[0]
    gap = np.full((height, PAD, 3), 255, dtype=np.uint8)
    row = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    if not label:
        return row
    picture = Image.fromarray(row)
    draw = ImageDraw.Draw(picture)
    width = image.shape[1]
    for index, title in enumerate(titles):
        left = index * (width + PAD)
        box = draw.textbbox((left + 3, 2), title)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((left + 3, 2), title, fill=(255, 255, 255))
    return np.asarray(picture)


def stack_rows(rows: list[np.ndarray], pad: int = PAD) -> np.ndarray:
    """Rows of panels (same width) stacked vertically with white gaps: ``(H', W, 3)`` uint8."""
    width = max(row.shape[1] for row in rows)
    parts = []
    for row in rows:
        if row.shape[1] < width:
            fill = np.full((row.shape[0], width - row.shape[1], 3), 255, dtype=np.uint8)
            row = np.concatenate([row, fill], axis=1)
        parts += [row, np.full((pad, width, 3), 255, dtype=np.uint8)]
    return np.concatenate(parts[:-1], axis=0)
