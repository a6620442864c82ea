"""Subjects, cameras and placement of the synthetic world.

A person's distance follows from how much of the frame it should fill: the larger side of its
projected bounding box is drawn as a fraction of the image height (``frame_fraction``) and the
distance that gives it, ``z = f * extent / (fraction * H)``, is clamped to ``distance``. With the
default focal ``sqrt(w^2 + h^2)`` (f / H = 1.41 for square images, at any resolution) a standing
person (about 1.75 m) fills 45-90 % of the height at 2.7-5.5 m, a crouching one stands at
2-3.5 m, one with raised arms at 3.3-6.6 m; the clamp binds only at its near end (small poses).
The box is then placed inside the frame, or, with probability ``truncation``, up to
``max_truncation`` of its size outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fitkit.geometry.camera import default_intrinsics
from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle


@dataclass
class SceneConfig:
    """Distributions of the scene parameters (angles in degrees, distances in meters).

    Attributes:
        focal_jitter: the focal length is ``sqrt(w^2 + h^2) * (1 + U(-j, j))``.
        frame_fraction: range of the person's bounding-box side as a fraction of the image height.
        distance: clamp of the camera-to-person distance (bounding-box centre depth).
        truncation: probability that the person may extend past the image border.
        max_truncation: the largest fraction of the box outside the frame when truncated.
        pitch, roll: standard deviations of the camera's tilt and roll about the person.
        betas_clip: shape coefficients are N(0, 1) clipped to ``±betas_clip``.
    """

    focal_jitter: float = 0.1
    frame_fraction: tuple[float, float] = (0.45, 0.9)
    distance: tuple[float, float] = (2.0, 8.0)
    truncation: float = 0.1
    max_truncation: float = 0.3
    pitch: float = 8.0
    roll: float = 5.0
    betas_clip: float = 3.0


def sample_global_orient(generator: torch.Generator, config: SceneConfig) -> Tensor:
    """Root orientation: upright facing the camera, ``(π, 0, 0)``, turned by a yaw drawn
    uniformly over the full circle about the body's vertical axis, then tilted by a small camera
    pitch (about the camera's x axis) and roll (about its z axis).

    Returns:
        ``(3,)`` axis-angle, body frame -> camera frame.
    """
    yaw = 2.0 * math.pi * float(torch.rand((), generator=generator))
    pitch, roll = torch.randn(2, generator=generator).tolist()
    rotvecs = torch.zeros(4, 3, dtype=torch.float64)
    rotvecs[0, 2] = math.radians(config.roll) * roll  # camera roll
    rotvecs[1, 0] = math.radians(config.pitch) * pitch  # camera pitch
    rotvecs[2, 0] = math.pi  # upright, facing the camera
    rotvecs[3, 1] = yaw  # about the body's vertical axis
    r = axis_angle_to_matrix(rotvecs)
    matrix = r[0] @ r[1] @ r[2] @ r[3]
    return matrix_to_axis_angle(matrix).float()


def sample_betas(generator: torch.Generator, config: SceneConfig, num_betas: int = 10) -> Tensor:
    """Shape coefficients from N(0, 1) clipped to ``±config.betas_clip`` -> ``(num_betas,)``."""
    betas = torch.randn(num_betas, generator=generator)
    return betas.clamp(-config.betas_clip, config.betas_clip)


def sample_focal_length(generator: torch.Generator, config: SceneConfig, width: int,
                        height: int) -> float:
    """Focal length in pixels: the default (:func:`fitkit.geometry.default_intrinsics`,
    ``sqrt(w^2 + h^2)``) with a uniform relative jitter."""
    jitter = (2.0 * float(torch.rand((), generator=generator)) - 1.0) * config.focal_jitter
    focal, _ = default_intrinsics(np.array([[width, height]]))
    return float(focal[0, 0]) * (1.0 + jitter)


def sample_placement(generator: torch.Generator, config: SceneConfig) -> Tensor:
    """The random numbers of one placement, kept apart from their use so that the draws do not
    depend on the body: ``(4,)`` uniforms (size, truncation, horizontal, vertical position)."""
    return torch.rand(4, generator=generator, dtype=torch.float64)


def place_bodies(
    vertices: Tensor,
    focal_length: Tensor,
    principal_point: Tensor,
    image_size: tuple[int, int],
    draws: Tensor,
    config: SceneConfig,
) -> Tensor:
    """Translations that place posed bodies in their cameras' frames.

    The depth of the 3D bounding box's centre gives its larger side the drawn fraction of the
    image height; the body is then shifted parallel to the image plane so that the centre of its
    projected 2D bounding box lands on the drawn image point.

    Args:
        vertices: ``(B, V, 3)`` posed vertices with zero translation (camera orientation).
        focal_length: ``(B,)`` pixels.
        principal_point: ``(B, 2)`` pixels.
        image_size: ``(H, W)``.
        draws: ``(B, 4)`` uniforms from :func:`sample_placement`.
        config: scene settings.
    Returns:
        ``(B, 3)`` translations ``transl`` (meters, camera frame).
    """
    height, width = image_size
    draws = draws.to(vertices.dtype)
    lo, hi = vertices.amin(dim=1), vertices.amax(dim=1)  # (B, 3)
    extent = (hi - lo)[:, :2].amax(dim=1)
    f_min, f_max = config.frame_fraction
    fraction = f_min + (f_max - f_min) * draws[:, 0]
    depth = (focal_length * extent / (fraction * height)).clamp(*config.distance)
    centred = -0.5 * (lo + hi)
    centred[:, 2] += depth
    points = vertices + centred[:, None]
    pixels = focal_length[:, None, None] * points[..., :2] / points[..., 2:]  # from the axis
    box_lo, box_hi = pixels.amin(dim=1), pixels.amax(dim=1)  # (B, 2)
    box = box_hi - box_lo
    truncated = draws[:, 1] < config.truncation
    slack = torch.where(truncated, config.max_truncation, 0.0)[:, None] * box
    size = torch.tensor([width - 1.0, height - 1.0], dtype=vertices.dtype)
    low = (box / 2 - slack).clamp(max=size / 2)
    high = (size - box / 2 + slack).clamp(min=size / 2)
    target = low + (high - low) * draws[:, 2:4] - principal_point
    shift = (target - 0.5 * (box_lo + box_hi)) * depth[:, None] / focal_length[:, None]
    return centred + torch.cat([shift, torch.zeros_like(depth[:, None])], dim=1)


def axis_rotations(axis: int, angle: Tensor) -> Tensor:
    """Rotations by ``angle`` radians about coordinate axis ``axis`` (0 = x, 1 = y, 2 = z).

    Args:
        angle: ``(...)`` radians.
    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    rotvec = torch.zeros(*angle.shape, 3, dtype=angle.dtype)
    rotvec[..., axis] = angle
    return axis_angle_to_matrix(rotvec)


def upright_orientation(yaw: Tensor) -> Tensor:
    """A body standing upright in a y-down frame, turned by ``yaw`` about its vertical axis
    (at yaw 0 it faces the frame's -z, a camera looking along +z):
    ``R_x(π) R_y(yaw)``, the orientation of :func:`sample_global_orient` before the camera tilt.

    Args:
        yaw: ``(...)`` radians.
    Returns:
        ``(..., 3, 3)`` body -> frame rotations.
    """
    return axis_rotations(0, torch.full_like(yaw, math.pi)) @ axis_rotations(1, yaw)


def camera_tilt(pitch: Tensor, roll: Tensor) -> Tensor:
    """A camera's tilt: roll about its z axis after pitch about its x axis, ``R_z(roll)
    R_x(pitch)`` (as :func:`sample_global_orient` applies them).

    Args:
        pitch, roll: ``(...)`` radians.
    Returns:
        ``(..., 3, 3)`` rotations.
    """
    return axis_rotations(2, roll) @ axis_rotations(0, pitch)
