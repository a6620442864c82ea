"""Overlay pictures of fits: meshes drawn over their images, side by side for comparison, and
seen from the side and from above.

``compare(image, {"init": vertices0, "refined": vertices1}, faces, camera)`` gives one row of
panels: the image, then each mesh shaded over it, each panel labelled.
``views(image, vertices, faces, camera)`` gives the overlay, then the mesh turned 90° about the
vertical axis through its centre (seen from the right) and from above, each framed by its own
camera: what the front overlay hides (depth, bodies bent or leaning towards the camera) shows in
the last two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from fitkit.geometry import Camera
from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.render.shade import shade, to_uint8

COLORS: dict[str, tuple[float, float, float]] = {
    "init": (0.95, 0.62, 0.35),
    "refined": (0.55, 0.75, 0.98),
    "gt": (0.55, 0.9, 0.55),
}
"""Mesh colour per panel label (others get the last one)."""

PAD = 4
"""Pixels between panels."""

VIEW_BACKGROUND = 0.92
"""Grey level behind the side and top views."""

VIEW_MARGIN = 0.08
"""Share of a side or top panel's height and width left free on each side of the mesh."""

VIEW_DISTANCE = 6.0
"""Distance of a side or top view's camera to the mesh's centre, in the largest sides of its
bounding box: far enough that the near parts are drawn hardly larger than the far ones."""

VIEW_ROTATIONS: dict[str, tuple[float, float, float]] = {
    "side": (0.0, math.pi / 2, 0.0),
    "top": (math.pi / 2, 0.0, 0.0),
}
"""Axis-angle turn of the mesh about its centre, camera frame (y down), per view: ``side``
turns it 90° about the vertical axis (its far side to the right), ``top`` tips its top towards
the camera (its far side at the top of the panel)."""


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
    return _row(panels, titles if label else None)


def views(
    image: np.ndarray,
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    color: tuple[float, float, float] = COLORS["refined"],
    label: str | None = "refined",
) -> np.ndarray:
    """One mesh over its image, from the side and from above, in one row of panels of the
    image's size.

    The side and top views turn the mesh about the centre of its bounding box
    (:data:`VIEW_ROTATIONS`) and draw it on a grey background through a camera that frames it
    (:func:`frame_mesh`), so a body at any distance fills its panel.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        vertices: ``(V, 3)`` camera-frame vertices; faces: ``(F, 3)``.
        camera: one camera (batch 1) of the image.
        color: the mesh's RGB in [0, 1].
        label: titles ``LABEL``, ``LABEL side``, ``LABEL top`` in the panels' corners; ``None``
            for none.
    Returns:
        ``(H, 3 * W + 2 * PAD, 3)`` uint8: overlay | side | top.
    Raises:
        ValueError: ``vertices`` not of shape ``(V, 3)``.
    """
    panels = _view_panels(image, vertices, faces, camera, color)
    return _row(panels, None if label is None else _view_titles(label))


def compare_views(
    image: np.ndarray,
    meshes: Mapping[str, Tensor],
    faces: Tensor,
    camera: Camera,
) -> np.ndarray:
    """The image, then one row per mesh: overlay | side | top (:func:`views`), labelled.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        meshes: label -> ``(V, 3)`` camera-frame vertices (e.g. ``refined``, ``init``), one row
            each, in that order; colours from :data:`COLORS`.
        faces: ``(F, 3)``; camera: one camera (batch 1) of the image.
    Returns:
        ``(M * H + (M - 1) * PAD, 4 * W + 3 * PAD, 3)`` uint8: the image in the first row's
        first panel, white under it.
    """
    blank = np.full_like(image, 255)
    rows = []
    for index, (name, vertices) in enumerate(meshes.items()):
        color = COLORS.get(name, COLORS["refined"])
        panels = _view_panels(image, vertices, faces, camera, color)
        first, title = (image, "image") if index == 0 else (blank, "")
        rows.append(_row([first, *panels], [title, *_view_titles(name)]))
    return stack_rows(rows)


def _view_titles(label: str) -> list[str]:
    return [label, f"{label} side", f"{label} top"]


def _view_panels(image: np.ndarray, vertices: Tensor, faces: Tensor, camera: Camera,
                 color: tuple[float, float, float]) -> list[np.ndarray]:
    """:func:`views`' three panels, ``(H, W, 3)`` uint8 each."""
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {tuple(vertices.shape)}")
    height, width = image.shape[:2]
    vertices = vertices.detach().float()
    panels = [overlay(image, vertices[None], faces, camera, color=color)[0]]
    background = torch.full((height, width, 3), VIEW_BACKGROUND, device=vertices.device)
    for rotvec in VIEW_ROTATIONS.values():
        rotation = axis_angle_to_matrix(torch.tensor(rotvec, device=vertices.device))
        # turned about the origin: frame_mesh centres the box, so about the box's centre
        turned, frame = frame_mesh(vertices @ rotation.T, width, height)
        shaded = shade(turned[None], faces.to(vertices.device), frame, (height, width),
                       color=color, background=background)
        panels.append(to_uint8(shaded[0]).numpy())
    return panels


def frame_mesh(vertices: Tensor, width: int, height: int, margin: float = VIEW_MARGIN,
               distance: float = VIEW_DISTANCE) -> tuple[Tensor, Camera]:
    """A mesh moved in front of a camera that frames it in a ``width x height`` image.

    The mesh is moved (not turned) so that its bounding box's centre lies on the optical axis,
    ``distance`` times the box's largest side away; focal length and principal point then put its
    projection in the middle of the image, ``margin`` of the image free on each side.

    Args:
        vertices: ``(V, 3)`` camera-frame vertices.
        width, height: image size in pixels.
        margin: share of the width and height left free on each side.
        distance: the camera's distance to the box's centre, in its largest sides.
    Returns:
        ``(V, 3)`` the moved vertices and their camera (batch 1, no extrinsics).
    """
    low, high = vertices.amin(dim=0), vertices.amax(dim=0)
    depth = distance * (high - low).max().clamp(min=1e-6)
    moved = vertices - (low + high) / 2
    moved = moved + torch.cat([moved.new_zeros(2), depth[None]])
    normalized = moved[:, :2] / moved[:, 2:]
    low_2d, high_2d = normalized.amin(dim=0), normalized.amax(dim=0)
    size = torch.tensor([float(width), float(height)], device=vertices.device)
    focal = ((1 - 2 * margin) * size / (high_2d - low_2d).clamp(min=1e-9)).min()
    principal = (size - 1) / 2 - focal * (low_2d + high_2d) / 2
    return moved, Camera(torch.stack([focal, focal])[None], principal[None], size[None])


def _row(panels: list[np.ndarray], titles: list[str] | None) -> np.ndarray:
    """Panels of one height side by side, :data:`PAD` white pixels apart, each titled in its
    top-left corner (white on black; ``""`` for none) unless ``titles`` is ``None``:
    ``(H, W', 3)`` uint8."""
    height = panels[0].shape[0]
    gap = np.full((height, PAD, 3), 255, dtype=np.uint8)
    row = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    if titles is None:
        return row
    picture = Image.fromarray(row)
    draw = ImageDraw.Draw(picture)
    left = 0
    for panel, title in zip(panels, titles, strict=True):
        if title:
            box = draw.textbbox((left + 3, 2), title)
            draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
            draw.text((left + 3, 2), title, fill=(255, 255, 255))
        left += panel.shape[1] + PAD
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
