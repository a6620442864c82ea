"""Full-frame cameras for crop-based networks (CLIFF; ReFit Eq. 3-4 and its supplement A.1).

A regressor sees a square crop of the full image: the crop box has its centre ``box_center =
(cx, cy)`` and side ``box_size = b``, both in full-image pixels, and *crop coordinates* are
``2 (pixel - box_center) / b``, ``[-1, 1]`` across the box (:mod:`fitkit.geometry.crop`, where
boxes, crop images and crop cameras live). ReFit's Eq. 4 divides by ``b`` only; its coordinates
are half of these.

A *weak-perspective camera* ``(s, tx, ty)`` maps body points ``X`` to crop coordinates
``s (X_xy + (tx, ty))``. Its full-frame equivalent is the translation ``transl`` of the body in
the camera frame of the full image (intrinsics ``camera``: focal ``(fx, fy)``, principal point
``(px, py)``)::

    tz = 2 f / (b s),   f = (fx + fy) / 2
    tx' = tx + (cx - px) tz / fx
    ty' = ty + (cy - py) tz / fy

With ``fx = fy = f`` and the principal point at the image centre this is ReFit's
``tx + 2 (cx - w/2) / (b s)``; fitkit uses the camera's principal point, which is the image centre
``((W - 1) / 2, (H - 1) / 2)`` in its pixel convention. Under this translation, body points in the
plane ``Z = 0`` project through the full camera to exactly their weak-perspective crop
coordinates (for square pixels), and the point that the weak-perspective camera puts at the crop
centre projects to the box centre.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fitkit.geometry.camera import Camera
from fitkit.geometry.crop import pixels_to_crop


def weak_perspective_to_full_frame(
    weak_camera: Tensor, box_center: Tensor, box_size: Tensor, camera: Camera
) -> Tensor:
    """Full-frame translation from a weak-perspective camera predicted on a crop.

    Args:
        weak_camera: ``(B, 3)`` weak-perspective cameras ``(s, tx, ty)`` on the crop (``s > 0``).
        box_center: ``(B, 2)`` crop box centres ``(cx, cy)`` in full-image pixels.
        box_size: ``(B,)`` crop box sides in full-image pixels.
        camera: the full image's cameras (batch B).
    Returns:
        ``(B, 3)`` translation ``transl`` of the body in the full image's camera frame (meters).
    """
    scale, t_xy = weak_camera[:, 0], weak_camera[:, 1:]
    focal = camera.focal_length.mean(dim=-1)
    depth = 2.0 * focal / (box_size * scale)
    offset = (box_center - camera.principal_point) * depth[:, None] / camera.focal_length
    return torch.cat([t_xy + offset, depth[:, None]], dim=-1)


def full_frame_to_weak_perspective(
    transl: Tensor, box_center: Tensor, box_size: Tensor, camera: Camera
) -> Tensor:
    """Weak-perspective crop camera from a full-frame translation (inverse of
    :func:`weak_perspective_to_full_frame`).

    Args:
        transl: ``(B, 3)`` body translations in the full image's camera frame (``tz > 0``).
        box_center: ``(B, 2)`` crop box centres in full-image pixels.
        box_size: ``(B,)`` crop box sides in full-image pixels.
        camera: the full image's cameras (batch B).
    Returns:
        ``(B, 3)`` weak-perspective cameras ``(s, tx, ty)``.
    """
    depth = transl[:, 2]
    focal = camera.focal_length.mean(dim=-1)
    scale = 2.0 * focal / (box_size * depth)
    offset = (box_center - camera.principal_point) * depth[:, None] / camera.focal_length
    return torch.cat([scale[:, None], transl[:, :2] - offset], dim=-1)


def full_frame_adjusted_projection(
    points: Tensor, box_center: Tensor, box_size: Tensor, camera: Camera
) -> Tensor:
    """ReFit's full-frame adjusted reprojection (Eq. 3-4): project with the full image's camera,
    then express the pixels in the crop's coordinates.

    A network working on the crop gets reprojections that are consistent with the image formation
    of the full frame (off-centre crops see the body obliquely), normalised by the box size.

    Args:
        points: ``(B, N, 3)`` points in the full image's camera frame (e.g. joints + ``transl``).
        box_center: ``(B, 2)`` crop box centres in full-image pixels.
        box_size: ``(B,)`` crop box sides in full-image pixels.
        camera: the full image's cameras (batch B).
    Returns:
        ``(B, N, 2)`` crop coordinates, ``[-1, 1]`` across the box.
    """
    return pixels_to_crop(camera.project(points), box_center, box_size)

