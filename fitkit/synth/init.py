"""Initial estimates perturbed like a regressor's output.

A regressor's errors grow towards the extremities, its global orientation is off by some degrees,
its shape is biased towards the mean and, above all, it misjudges depth while keeping the person in
place in the image. :func:`perturb_body` and :func:`perturb_transl` mimic this:

- each body joint's local rotation is composed with a random rotation whose per-axis standard
  deviation grows along the kinematic chain: ``pose + pose_growth * (level - 1)`` radians, level 1
  for the hips and spine1, 7 for the wrists, 8 for the hands (a per-axis sigma s gives a mean
  rotation angle of about 1.6 s);
- the global orientation is composed (in the camera frame) with a random rotation of per-axis
  sigma ``global_orient``;
- ``betas`` get Gaussian noise of sigma ``betas``;
- the root joint's camera-frame position is scaled by ``exp(depth * N(0, 1))`` (a relative depth
  error, which keeps its image position) and shifted parallel to the image plane by
  ``shift * N(0, 1)`` times the person's size in pixels (the larger side of its bounding box).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fitkit.body.keypoints import SMPL_PARENTS
from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle


@dataclass
class InitNoise:
    """Magnitudes of the initial-estimate perturbation (radians, shape units, fractions).

    Attributes:
        pose: per-axis sigma of the local rotation noise at kinematic level 1.
        pose_growth: added per-axis sigma per level further from the pelvis.
        global_orient: per-axis sigma of the root orientation noise.
        betas: sigma of the shape noise.
        depth: sigma of ``log(z_init / z_gt)`` of the root joint.
        shift: sigma of the image-plane offset, in units of the person's size in pixels.
    """

    pose: float = 0.05
    pose_growth: float = 0.02
    global_orient: float = 0.08
    betas: float = 0.3
    depth: float = 0.1
    shift: float = 0.02


def kinematic_levels() -> Tensor:
    """``(23,)`` long: the number of bones between each body joint (SMPL joints 1-23) and the
    pelvis (1 for the hips and spine1, 8 for the hands)."""
    levels = [0] * len(SMPL_PARENTS)
    for joint, parent in enumerate(SMPL_PARENTS):
        if parent >= 0:
            levels[joint] = levels[parent] + 1
    return torch.tensor(levels[1:])


def draw_init_noise(generator: torch.Generator, num_betas: int) -> dict[str, Tensor]:
    """The standard normal draws of one sample's perturbation, in a fixed order.

    Returns:
        ``body_pose`` (23, 3), ``global_orient`` (3,), ``betas`` (num_betas,), ``depth`` (1,),
        ``shift`` (2,).
    """
    return {
        "body_pose": torch.randn(23, 3, generator=generator),
        "global_orient": torch.randn(3, generator=generator),
        "betas": torch.randn(num_betas, generator=generator),
        "depth": torch.randn(1, generator=generator),
        "shift": torch.randn(2, generator=generator),
    }


def perturb_body(
    global_orient: Tensor, body_pose: Tensor, betas: Tensor, noise: dict[str, Tensor],
    config: InitNoise,
) -> tuple[Tensor, Tensor, Tensor]:
    """Perturbed orientation, pose and shape.

    Args:
        global_orient: ``(B, 3)``; body_pose: ``(B, 69)``; betas: ``(B, K)``.
        noise: batched :func:`draw_init_noise` draws (each with a leading B).
        config: magnitudes.
    Returns:
        ``global_orient`` ``(B, 3)``, ``body_pose`` ``(B, 69)``, ``betas`` ``(B, K)``.
    """
    batch = body_pose.shape[0]
    sigma = config.pose + config.pose_growth * (kinematic_levels() - 1).to(body_pose)
    local = axis_angle_to_matrix(noise["body_pose"] * sigma[None, :, None])
    pose = axis_angle_to_matrix(body_pose.view(batch, 23, 3)) @ local
    root = axis_angle_to_matrix(noise["global_orient"] * config.global_orient)
    orient = root @ axis_angle_to_matrix(global_orient)
    return (
        matrix_to_axis_angle(orient),
        matrix_to_axis_angle(pose).reshape(batch, 69),
        betas + config.betas * noise["betas"],
    )


def perturb_transl(
    transl: Tensor, root: Tensor, root_init: Tensor, focal_length: Tensor, size_px: Tensor,
    noise: dict[str, Tensor], config: InitNoise,
) -> Tensor:
    """Translation of the initial estimate: a depth error that keeps the root joint's image
    position, plus a small image-plane shift.

    Args:
        transl: ``(B, 3)`` ground-truth translation.
        root: ``(B, 3)`` ground-truth root joint at zero translation (rest root of the true shape).
        root_init: ``(B, 3)`` the same for the perturbed shape.
        focal_length: ``(B,)`` pixels.
        size_px: ``(B,)`` the person's size in the image (larger bounding-box side), pixels.
        noise: batched :func:`draw_init_noise` draws.
        config: magnitudes.
    Returns:
        ``(B, 3)`` perturbed translation.
    """
    position = (root + transl) * torch.exp(config.depth * noise["depth"])
    pixels = config.shift * size_px[:, None] * noise["shift"]  # (B, 2)
    shift = pixels * position[:, 2:] / focal_length[:, None]
    position = position + torch.cat([shift, torch.zeros_like(shift[:, :1])], dim=1)
    return position - root_init
