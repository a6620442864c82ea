"""Square crops of full images: boxes, crop images, crop cameras and crop coordinates.

A crop box has its centre ``box_center = (cx, cy)`` and side ``box_size = b``, both in full-image
pixels (fitkit's convention: pixel centres at integers, so the box covers
``[cx - b/2, cx + b/2] x [cy - b/2, cy + b/2]``; a box of side ``W`` centred on ``(W - 1) / 2``
covers a ``W``-pixel row exactly). Every function here takes boxes in this form.

*Crop coordinates* are normalised over the box: ``crop = 2 (pixel - box_center) / b``, so the box
edges are at -1 and +1 (the convention of ``grid_sample(..., align_corners=False)`` and of the
weak-perspective cameras of HMR/SPIN/ReFit, :mod:`fitkit.geometry.fullframe`). A *crop image* is
the box resampled to ``resolution x resolution`` pixels (:func:`crop_images`); its pixel ``i``
has crop coordinate ``(2 i + 1) / resolution - 1``, and its camera is :func:`crop_camera`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from fitkit.geometry.camera import Camera

CROP_FILL = 0.7
"""Default fill of :func:`crop_boxes`: the person's bounding-box side as a fraction of the box
side (the displacement network's training images: 0.45-0.9)."""

MAX_FILL = 0.9
"""Default largest fill of a box that :func:`crop_boxes` shrinks to stay inside the image."""

MIN_BOX_SIZE = 8.0
"""Smallest side of a box from :func:`crop_boxes` (pixels)."""


def crop_boxes(
    points: Tensor,
    fill: float = CROP_FILL,
    image_size: Tensor | None = None,
    max_fill: float = MAX_FILL,
) -> tuple[Tensor, Tensor]:
    """Square boxes around the bounding boxes of 2D points.

    Without ``image_size`` the box is centred on the points and its side is the bounding box's
    larger side / ``fill`` (at least :data:`MIN_BOX_SIZE`). With it, the box stays inside the
    image where it can, so that a network sees image rather than padding: the side shrinks to the
    image's shorter side but not below the bounding box's larger side / ``max_fill``, and the box
    shifts towards the image's interior, still holding the bounding box.

    Args:
        points: ``(B, N, 2)`` pixel positions ``(u, v)``.
        fill: the bounding box's larger side as a fraction of the box side.
        image_size: ``(B, 2)`` image sizes ``(W, H)``, or ``None``.
        max_fill: the largest fill of a box shrunk to fit the image.
    Returns:
        ``(B, 2)`` box centres and ``(B,)`` box sides, in pixels.
    """
    low, high = points.amin(dim=1), points.amax(dim=1)
    extent = (high - low).amax(dim=-1)
    side = (extent / fill).clamp(min=MIN_BOX_SIZE)
    center = 0.5 * (low + high)
    if image_size is not None:
        image_size = image_size.to(side.dtype)
        side = torch.minimum(side, torch.maximum(image_size.amin(dim=-1), extent / max_fill))
        half = 0.5 * side[:, None]
        inside = torch.minimum(torch.maximum(center, half - 0.5), image_size - half - 0.5)
        center = torch.where(image_size >= side[:, None], inside, center)
    return center, side


def crop_images(images: Tensor, box_center: Tensor, box_size: Tensor, resolution: int) -> Tensor:
    """Resample the boxes of images to ``resolution x resolution`` (bilinear; zeros outside the
    image).

    Args:
        images: ``(B, C, H, W)``.
        box_center: ``(B, 2)`` box centres in pixels.
        box_size: ``(B,)`` box sides in pixels.
        resolution: side of the crops in pixels.
    Returns:
        ``(B, C, resolution, resolution)``.
    """
    height, width = images.shape[-2:]
    steps = (torch.arange(resolution, device=images.device, dtype=images.dtype) + 0.5) / resolution
    # the box's top-left corner and the crop's pixel centres, measured from the image's edge
    corner = box_center - 0.5 * box_size[:, None] + 0.5
    u = corner[:, 0:1] + steps[None] * box_size[:, None]  # (B, S)
    v = corner[:, 1:2] + steps[None] * box_size[:, None]
    grid_x = (2.0 * u / width - 1.0)[:, None, :].expand(-1, resolution, -1)
    grid_y = (2.0 * v / height - 1.0)[:, :, None].expand(-1, -1, resolution)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def crop_camera(camera: Camera, box_center: Tensor, box_size: Tensor, resolution: int) -> Camera:
    """The pinhole cameras of the crop images (:func:`crop_images`).

    Projecting camera-frame points with them gives pixels of the crop images (fitkit's pixel
    convention in the crop: ``(crop + 1) * resolution / 2 - 1/2``), so rendering with them is
    rendering in the crop. Extrinsics are kept.

    Args:
        camera: the full images' cameras (batch B).
        box_center: ``(B, 2)`` crop box centres in full-image pixels.
        box_size: ``(B,)`` crop box sides in full-image pixels.
        resolution: ``R``, side of the crop images in pixels.
    Returns:
        cameras with focal ``f R / b``, principal point ``(p - c) R / b + (R - 1) / 2`` and image
        size ``(R, R)``.
    """
    zoom = resolution / box_size[:, None]
    centre = (resolution - 1) / 2.0
    return dataclasses.replace(
        camera,
        focal_length=camera.focal_length * zoom,
        principal_point=(camera.principal_point - box_center) * zoom + centre,
        image_size=camera.image_size.new_full(camera.image_size.shape, float(resolution)),
    )


def pixels_to_crop(pixels: Tensor, box_center: Tensor, box_size: Tensor) -> Tensor:
    """Full-image pixels to crop coordinates (``[-1, 1]`` across the box).

    Args:
        pixels: ``(B, N, 2)`` pixel coordinates ``(u, v)`` in the full image.
        box_center: ``(B, 2)`` crop box centres in pixels.
        box_size: ``(B,)`` crop box sides in pixels.
    Returns:
        ``(B, N, 2)`` crop coordinates ``2 (pixels - box_center) / box_size``.
    """
    return 2.0 * (pixels - box_center[:, None, :]) / box_size[:, None, None]


def crop_to_pixels(crop: Tensor, box_center: Tensor, box_size: Tensor) -> Tensor:
    """Crop coordinates back to full-image pixels (inverse of :func:`pixels_to_crop`).

    Args:
        crop: ``(B, N, 2)`` crop coordinates.
        box_center: ``(B, 2)`` crop box centres in pixels.
        box_size: ``(B,)`` crop box sides in pixels.
    Returns:
        ``(B, N, 2)`` full-image pixel coordinates.
    """
    return crop * box_size[:, None, None] / 2.0 + box_center[:, None, :]
