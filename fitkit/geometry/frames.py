"""A body's root parameters in a camera frame and in the world frame of calibrated cameras.

SMPL rotates the body about its rest root joint ``J0`` (which depends on ``betas``) and then
adds ``transl``: a rest point ``X`` lands at ``R_b (X - J0) + J0 + transl``. Seen through a
camera with extrinsics ``R, t`` (world -> camera), a body with world parameters
``(R_w, transl_w)`` has camera parameters

    ``R_c = R R_w``,   ``transl_c = R (J0 + transl_w) + t - J0``,

and back: ``R_w = R^T R_c``, ``transl_w = R^T (J0 + transl_c - t) - J0``. Several views' camera
parameters of one body give one world body each; :func:`average_world_params` pools them
(chordal mean of the orientations, mean of the translations).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fitkit.geometry.rotations import (
    average_rotations,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
)


def camera_to_world_params(
    global_orient: Tensor, transl: Tensor, root: Tensor, R: Tensor, t: Tensor
) -> tuple[Tensor, Tensor]:
    """Root parameters in a camera frame -> in the world frame.

    Args:
        global_orient: ``(B, 3)`` axis-angle, body -> camera.
        transl: ``(B, 3)`` translation in the camera frame (meters).
        root: ``(B, 3)`` the rest root joint ``J0`` of each body (its ``betas``), body frame.
        R: ``(B, 3, 3)`` world -> camera rotations.
        t: ``(B, 3)`` world -> camera translations.
    Returns:
        ``(B, 3)`` axis-angle body -> world and ``(B, 3)`` world translations.
    """
    Rt = R.transpose(-1, -2)
    orient = matrix_to_axis_angle(Rt @ axis_angle_to_matrix(global_orient))
    world = (Rt @ (root + transl - t)[..., None])[..., 0] - root
    return orient, world


def world_to_camera_params(
    global_orient: Tensor, transl: Tensor, root: Tensor, R: Tensor, t: Tensor
) -> tuple[Tensor, Tensor]:
    """Root parameters in the world frame -> in a camera frame (inverse of
    :func:`camera_to_world_params`; same shapes)."""
    orient = matrix_to_axis_angle(R @ axis_angle_to_matrix(global_orient))
    camera = (R @ (root + transl)[..., None])[..., 0] + t - root
    return orient, camera


def average_world_params(
    global_orient: Tensor, transl: Tensor, index: Tensor, count: int
) -> tuple[Tensor, Tensor]:
    """Pool world root parameters of samples that show the same body.

    Args:
        global_orient: ``(B, 3)`` axis-angle per sample.
        transl: ``(B, 3)`` translations per sample.
        index: ``(B,)`` long, the body of each sample in ``[0, count)``; every body has a sample.
        count: the number of bodies G.
    Returns:
        ``(G, 3)`` orientations (chordal mean, exact for identical rotations) and ``(G, 3)``
        mean translations.
    """
    matrices = axis_angle_to_matrix(global_orient)
    mean = mean_rotations(matrices, index, count)
    sums = transl.new_zeros(count, 3).index_add_(0, index, transl)
    counts = torch.bincount(index, minlength=count).to(transl)
    return matrix_to_axis_angle(mean), sums / counts[:, None]


def mean_rotations(matrices: Tensor, index: Tensor, count: int) -> Tensor:
    """Chordal means of the rotations of each of ``count`` sets.

    Args:
        matrices: ``(B, ..., 3, 3)`` rotations.
        index: ``(B,)`` long, the set of each rotation in ``[0, count)``; every set non-empty.
    Returns:
        ``(count, ..., 3, 3)``: per set, the rotation nearest (Frobenius) to the mean matrix
        (:func:`~fitkit.geometry.rotations.average_rotations`); a set's mean reads only its own
        rotations (a non-finite one spoils its set alone).
    """
    sums = matrices.new_zeros(count, *matrices.shape[1:]).index_add_(0, index, matrices)
    return average_rotations(sums[..., None, :, :])
