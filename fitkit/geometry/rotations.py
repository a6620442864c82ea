"""Rotation conversions and rotation averaging, through ``roma``.

Three representations are used in fitkit:

- axis-angle (rotation vector) ``(..., 3)``: the axis times the angle in radians, as in SMPL's
  ``global_orient`` and ``body_pose``;
- rotation matrix ``(..., 3, 3)``, acting on column vectors;
- 6D ``(..., 6)``: the first two columns of the matrix, read row-major, i.e. the 6 numbers
  reshaped to ``(..., 3, 2)`` are those columns. This is the layout of SPIN, VPoser and ReFit
  (``x.view(-1, 3, 2)``, Gram-Schmidt on the columns); the layouts of ProHMR and PyTorch3D differ
  and are converted where their files are loaded.

Quaternions are ``(..., 4)`` in roma's ``(x, y, z, w)`` order.

All functions accept any leading batch dimensions, keep the input's device and dtype and are
differentiable. ``roma`` is imported on first use, not with this module: importing it loads
``torch._dynamo`` (about a second), which ``import fitkit`` should not pay.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rotation matrices from axis-angle vectors (Rodrigues' formula).

    Args:
        axis_angle: ``(..., 3)`` rotation vectors, angle in radians.
    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    import roma

    return roma.rotvec_to_rotmat(axis_angle)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Axis-angle vectors from rotation matrices.

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices.
    Returns:
        ``(..., 3)`` rotation vectors with angles in ``[0, pi]``.
    """
    import roma

    return roma.rotmat_to_rotvec(matrix)


def rot6d_to_matrix(rot6d: Tensor) -> Tensor:
    """Rotation matrices from the 6D representation (SPIN/VPoser/ReFit layout).

    The 6 numbers, reshaped to ``(..., 3, 2)``, are two 3D column vectors ``a1, a2``. The matrix
    has the columns ``b1 = a1 / |a1|``, ``b2`` = ``a2`` made orthogonal to ``b1`` and normalised,
    ``b3 = b1 x b2`` (Gram-Schmidt on the columns).

    Args:
        rot6d: ``(..., 6)`` 6D rotations; the two columns must not be collinear.
    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    import roma

    return roma.special_gramschmidt(rot6d.unflatten(-1, (3, 2)))


def matrix_to_rot6d(matrix: Tensor) -> Tensor:
    """The 6D representation (SPIN/VPoser/ReFit layout) of rotation matrices.

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices.
    Returns:
        ``(..., 6)``: the first two columns, row-major ``(R00, R01, R10, R11, R20, R21)``.
    """
    return matrix[..., :2].flatten(-2)


def axis_angle_to_rot6d(axis_angle: Tensor) -> Tensor:
    """The 6D representation of axis-angle rotations.

    Args:
        axis_angle: ``(..., 3)`` rotation vectors.
    Returns:
        ``(..., 6)`` 6D rotations (layout of :func:`matrix_to_rot6d`).
    """
    return matrix_to_rot6d(axis_angle_to_matrix(axis_angle))


def rot6d_to_axis_angle(rot6d: Tensor) -> Tensor:
    """Axis-angle rotations from the 6D representation.

    Args:
        rot6d: ``(..., 6)`` 6D rotations (layout of :func:`rot6d_to_matrix`).
    Returns:
        ``(..., 3)`` rotation vectors.
    """
    return matrix_to_axis_angle(rot6d_to_matrix(rot6d))


def compose_axis_angle(rotations: Sequence[Tensor]) -> Tensor:
    """The composition ``R_1 R_2 ... R_n`` of axis-angle rotations (the last is applied first).

    Args:
        rotations: n ``(..., 3)`` rotation vectors (broadcastable).
    Returns:
        ``(..., 3)`` rotation vector of the product.
    """
    import roma

    return roma.rotvec_composition(rotations)


def axis_angle_to_quaternion(axis_angle: Tensor) -> Tensor:
    """Unit quaternions from axis-angle vectors.

    Args:
        axis_angle: ``(..., 3)`` rotation vectors.
    Returns:
        ``(..., 4)`` unit quaternions ``(x, y, z, w)``.
    """
    import roma

    return roma.rotvec_to_unitquat(axis_angle)


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """Axis-angle vectors from unit quaternions (the shortest arc: angles in ``[0, pi]``).

    Args:
        quaternion: ``(..., 4)`` unit quaternions ``(x, y, z, w)``; not normalised here.
    Returns:
        ``(..., 3)`` rotation vectors.
    """
    import roma

    return roma.unitquat_to_rotvec(quaternion)


def quaternion_product(first: Tensor, second: Tensor) -> Tensor:
    """The Hamilton product ``first * second`` (the rotation ``second`` applied first).

    Args:
        first, second: ``(..., 4)`` quaternions ``(x, y, z, w)`` (broadcastable).
    Returns:
        ``(..., 4)`` quaternions ``(x, y, z, w)``.
    """
    import roma

    return roma.quat_product(first, second)


def quaternion_conjugate(quaternion: Tensor) -> Tensor:
    """The conjugate ``(-x, -y, -z, w)`` (the inverse rotation for a unit quaternion).

    Args:
        quaternion: ``(..., 4)`` quaternions ``(x, y, z, w)``.
    Returns:
        ``(..., 4)`` quaternions.
    """
    import roma

    return roma.quat_conjugation(quaternion)


def average_rotations(matrices: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted chordal mean of rotations.

    The weighted arithmetic mean of the matrices is projected back onto SO(3): the result ``R``
    maximises ``trace(R^T M)`` for the mean ``M``, i.e. minimises ``sum_k w_k |R - R_k|_F^2``.
    This is the SVD ``M = U S V^T`` with the determinant fix ``R = U diag(1, 1, d) V^T``,
    ``d = det(U V^T)``, so the result is a rotation even where ``U V^T`` would be a reflection;
    ``roma.special_procrustes`` computes it (in closed form where it can, the same solution).

    Args:
        matrices: ``(..., K, 3, 3)`` K rotations to average per batch element.
        weights: ``(..., K)`` non-negative weights, not all zero (normalised here); uniform if None.
    Returns:
        ``(..., 3, 3)`` mean rotations.
    """
    if weights is None:
        mean = matrices.mean(dim=-3)
    else:
        weights = weights / weights.sum(dim=-1, keepdim=True)
        mean = torch.einsum("...k,...kij->...ij", weights.to(matrices.dtype), matrices)
    import roma

    return roma.special_procrustes(mean)
