"""Rotation conversions and rotation averaging, written in fitkit (no third-party rotation library).

Three representations are used in fitkit:

- axis-angle (rotation vector) ``(..., 3)``: the axis times the angle in radians, as in SMPL's
  ``global_orient`` and ``body_pose``;
- rotation matrix ``(..., 3, 3)``, acting on column vectors;
- 6D ``(..., 6)``: the first two columns of the matrix, read row-major, i.e. the 6 numbers
  reshaped to ``(..., 3, 2)`` are those columns. This is the layout of SPIN, VPoser and ReFit
  (``x.view(-1, 3, 2)``, Gram-Schmidt on the columns); the layouts of ProHMR and PyTorch3D differ
  and are converted where their files are loaded.

Quaternions are ``(..., 4)`` in ``(x, y, z, w)`` order (scalar last, as scipy's ``as_quat``).

All functions accept any leading batch dimensions, keep the input's device and dtype and are
differentiable (reverse and forward mode, under ``torch.func.vmap`` too). Functions of the angle
``theta`` that are 0/0 at ``theta = 0`` switch to their Taylor series for ``theta < 1e-4`` (exact
to float64 rounding there); the closed form is evaluated on a harmless stand-in value where the
series is used ("safe where"), so neither the value nor the gradient can become NaN.
``tests/test_rotations.py`` checks them against scipy. They are written here rather than taken
from ``roma`` because importing roma loads ``torch._dynamo`` (about 2 s on a small CPU), which
every fit process would pay.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SMALL_ANGLE_SQUARED = 1e-8
"""Below this squared angle (``theta < 1e-4``) Taylor series replace the closed forms; their
first omitted term is below ``theta^4 / 3840``, under float64's rounding there."""

GRADIENT_DAMPING = 1e-5
"""Damping of ``1 / t`` for the sums ``t = D_i + D_j`` of signed singular values in the derivative
of :func:`nearest_rotation`: where the nearest rotation is not unique a sum vanishes, and
``t / (t^2 + GRADIENT_DAMPING^2)`` keeps the derivative bounded."""


def _check_last_dims(tensor: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(tensor.shape[tensor.dim() - len(shape):]) != shape or tensor.dim() < len(shape):
        wanted = ", ".join(["..."] + [str(size) for size in shape])
        raise ValueError(f"{name} must have shape ({wanted}), got {tuple(tensor.shape)}")


def _half_angle_terms(squared_angle: Tensor) -> tuple[Tensor, Tensor]:
    """``sin(theta / 2) / theta`` and ``cos(theta / 2)`` from ``theta^2`` ``(...,)``: a rotation
    vector ``v`` has the unit quaternion ``(v sin(theta / 2) / theta, cos(theta / 2))``."""
    s = squared_angle
    small = s < SMALL_ANGLE_SQUARED
    half = 0.5 * torch.sqrt(torch.where(small, torch.ones_like(s), s))  # "safe where": no 0/0
    sine = torch.where(small, 0.5 - s / 48.0, torch.sin(half) / (2.0 * half))
    cosine = torch.where(small, 1.0 - s / 8.0, torch.cos(half))
    return sine, cosine


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rotation matrices from axis-angle vectors (Rodrigues' formula).

    ``R = cos(theta) I + a [v]_x + b v v^T`` for the rotation vector ``v`` of angle
    ``theta = |v|``, ``a = sin(theta) / theta``, ``b = (1 - cos(theta)) / theta^2``. They come from
    the half-angle terms ``u = sin(theta / 2) / theta`` and ``c = cos(theta / 2)``: ``a = 2 u c``,
    ``b = 2 u^2``, ``cos(theta) = 1 - b theta^2`` (no cancellation near 0), with Taylor series
    near ``theta = 0``: exact at 0 (the identity, and the derivative ``[dv]_x``), finite
    gradients everywhere.

    Args:
        axis_angle: ``(..., 3)`` rotation vectors, angle in radians.
    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    _check_last_dims(axis_angle, (3,), "axis_angle")
    squared = (axis_angle * axis_angle).sum(dim=-1)
    sine, cosine = _half_angle_terms(squared)
    symmetric = 2.0 * sine * sine  # (1 - cos(theta)) / theta^2
    along = symmetric[..., None] * axis_angle
    across = (2.0 * sine * cosine)[..., None] * axis_angle  # sin(theta) v / theta
    # One stack of the nine entries (few tensor ops: this runs in every fitting iteration).
    diagonal = (1.0 - symmetric * squared)[..., None] + along * axis_angle  # cos + b v_i^2
    products = along * axis_angle.roll(-1, dims=-1)  # b (xy, yz, zx)
    turns = across.roll(1, dims=-1)  # a (z, x, y)
    r00, r11, r22 = diagonal.unbind(-1)
    r10, r21, r02 = (products + turns).unbind(-1)
    r01, r12, r20 = (products - turns).unbind(-1)
    return torch.stack([r00, r01, r02, r10, r11, r12, r20, r21, r22], dim=-1).unflatten(-1, (3, 3))


def _matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)`` ``(x, y, z, w)`` of ``(..., 3, 3)`` rotation matrices.

    Each row of the symmetric matrix ``4 q q^T`` is a linear function of the matrix entries and
    proportional to ``q``; the row with the largest diagonal entry ``4 q_i^2`` (at least 1 for a
    rotation) is normalised (Shepperd's case selection, without square roots or division by a
    small component, so it stays accurate near 180 degrees). The sign of ``q`` is arbitrary.
    """
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = (row.unbind(-1)
                                                         for row in matrix.unbind(-2))
    xy, xz, yz = r01 + r10, r02 + r20, r12 + r21
    xw, yw, zw = r21 - r12, r02 - r20, r10 - r01
    rows = torch.stack([
        1.0 + r00 - r11 - r22, xy, xz, xw,
        xy, 1.0 - r00 + r11 - r22, yz, yw,
        xz, yz, 1.0 - r00 - r11 + r22, zw,
        xw, yw, zw, 1.0 + r00 + r11 + r22,
    ], dim=-1).unflatten(-1, (4, 4))
    best = rows.diagonal(dim1=-2, dim2=-1).argmax(dim=-1)
    chosen = rows.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return chosen / chosen.norm(dim=-1, keepdim=True)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Axis-angle vectors from rotation matrices.

    Through the unit quaternion (:func:`_matrix_to_quaternion`, stable at every angle) and
    :func:`quaternion_to_axis_angle` (``atan2``, shortest arc). At exactly ``pi`` either of the two
    opposite vectors may come out (both are the same rotation).

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices.
    Returns:
        ``(..., 3)`` rotation vectors with angles in ``[0, pi]``.
    """
    _check_last_dims(matrix, (3, 3), "matrix")
    return quaternion_to_axis_angle(_matrix_to_quaternion(matrix))


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
    _check_last_dims(rot6d, (6,), "rot6d")
    columns = rot6d.unflatten(-1, (3, 2))
    first, second = columns[..., 0], columns[..., 1]
    first = first / first.norm(dim=-1, keepdim=True)
    second = second - (first * second).sum(dim=-1, keepdim=True) * first
    second = second / second.norm(dim=-1, keepdim=True)
    third = torch.linalg.cross(first, second, dim=-1)
    return torch.stack([first, second, third], dim=-1)


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

    Composed as unit quaternions; the result is the shortest arc (angle in ``[0, pi]``).

    Args:
        rotations: n >= 1 ``(..., 3)`` rotation vectors (broadcastable).
    Returns:
        ``(..., 3)`` rotation vector of the product.
    """
    if len(rotations) == 0:
        raise ValueError("compose_axis_angle needs at least one rotation")
    product = axis_angle_to_quaternion(rotations[0])
    for rotation in rotations[1:]:
        product = quaternion_product(product, axis_angle_to_quaternion(rotation))
    return quaternion_to_axis_angle(product)


def axis_angle_to_quaternion(axis_angle: Tensor) -> Tensor:
    """Unit quaternions from axis-angle vectors: ``(v sin(theta / 2) / theta, cos(theta / 2))``.

    Args:
        axis_angle: ``(..., 3)`` rotation vectors.
    Returns:
        ``(..., 4)`` unit quaternions ``(x, y, z, w)`` (``w >= 0`` for angles up to ``pi``).
    """
    _check_last_dims(axis_angle, (3,), "axis_angle")
    sine, cosine = _half_angle_terms((axis_angle * axis_angle).sum(dim=-1))
    return torch.cat([sine[..., None] * axis_angle, cosine[..., None]], dim=-1)


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """Axis-angle vectors from quaternions (the shortest arc: angles in ``[0, pi]``).

    With ``w >= 0`` (the quaternion negated otherwise), the angle is
    ``2 atan2(|(x, y, z)|, w)`` about the axis ``(x, y, z)``, so the result is that of the
    normalised quaternion; a Taylor series of ``atan2(n, w) / n`` serves small angles.

    Args:
        quaternion: ``(..., 4)`` quaternions ``(x, y, z, w)``, non-zero (unit for rotations).
    Returns:
        ``(..., 3)`` rotation vectors.
    """
    _check_last_dims(quaternion, (4,), "quaternion")
    quaternion = torch.where(quaternion[..., 3:] < 0, -quaternion, quaternion)
    vector, scalar = quaternion[..., :3], quaternion[..., 3]
    squared = (vector * vector).sum(dim=-1)
    small = squared < SMALL_ANGLE_SQUARED * scalar * scalar  # tan(theta / 2) < 1e-4
    # "safe where": each branch sees stand-in values where it is not used, so no 0/0 or 1/0
    # reaches the gradient. Series: atan(r) / r = 1 - r^2 / 3 + ... with r = n / w.
    near = torch.where(small, scalar, torch.ones_like(scalar))
    ratio = torch.where(small, squared, torch.zeros_like(squared)) / (near * near)
    norm = torch.sqrt(torch.where(small, torch.ones_like(squared), squared))
    factor = torch.where(small, (1.0 - ratio / 3.0) / near,
                         torch.atan2(norm, scalar) / norm)  # atan2(n, w) / n
    return (2.0 * factor)[..., None] * vector


def quaternion_product(first: Tensor, second: Tensor) -> Tensor:
    """The Hamilton product ``first * second`` (the rotation ``second`` applied first).

    ``(p, a) * (q, b) = (a q + b p + p x q, a b - p . q)`` for vector parts ``p, q`` and scalar
    parts ``a, b``.

    Args:
        first, second: ``(..., 4)`` quaternions ``(x, y, z, w)`` (broadcastable).
    Returns:
        ``(..., 4)`` quaternions ``(x, y, z, w)``.
    """
    _check_last_dims(first, (4,), "first")
    _check_last_dims(second, (4,), "second")
    first, second = torch.broadcast_tensors(first, second)
    p, a = first[..., :3], first[..., 3:]
    q, b = second[..., :3], second[..., 3:]
    vector = a * q + b * p + torch.linalg.cross(p, q, dim=-1)
    return torch.cat([vector, a * b - (p * q).sum(dim=-1, keepdim=True)], dim=-1)


def quaternion_conjugate(quaternion: Tensor) -> Tensor:
    """The conjugate ``(-x, -y, -z, w)`` (the inverse rotation for a unit quaternion).

    Args:
        quaternion: ``(..., 4)`` quaternions ``(x, y, z, w)``.
    Returns:
        ``(..., 4)`` quaternions.
    """
    _check_last_dims(quaternion, (4,), "quaternion")
    return torch.cat([-quaternion[..., :3], quaternion[..., 3:]], dim=-1)


class _NearestRotation(torch.autograd.Function):
    """The rotation nearest (Frobenius) to ``(..., 3, 3)`` matrices ``M``, with its derivative.

    With the SVD ``M = U S V^T`` and ``d = det(U V^T)``, ``R = U diag(1, 1, d) V^T``. Writing
    ``M = U D W^T`` with ``W = V diag(1, 1, d)`` and the signed values ``D = S diag(1, 1, d)``,
    ``R = U W^T``, and differentiating ``M`` gives ``dR = U Omega W^T`` with
    ``Omega_ij = (X_ij - X_ji) / (D_i + D_j)``, ``X = U^T dM W`` (``Omega`` is skew, so only the
    off-diagonal sums matter; they are damped by :data:`GRADIENT_DAMPING`). The reverse mode is
    the adjoint: ``grad_M = U (K * (H - H^T)) W^T`` with ``H = U^T grad_R W`` and
    ``K_ij = 1 / (D_i + D_j)``, the same map. The SVD's own derivative is not used: it is NaN
    when singular values repeat (e.g. the mean of identical rotations). Matrices with a
    non-finite entry give NaN rotations, the others are unaffected.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        finite = matrix.isfinite().all(dim=-1).all(dim=-1)
        identity = torch.eye(3, dtype=matrix.dtype, device=matrix.device)
        left, values, right_t = torch.linalg.svd(torch.where(finite[..., None, None], matrix,
                                                             identity))
        sign = torch.where(torch.linalg.det(left @ right_t) < 0, -1.0, 1.0).to(matrix.dtype)
        flip = torch.cat([torch.ones_like(values[..., :2]), sign[..., None]], dim=-1)
        right_t = right_t * flip[..., :, None]  # W^T: the last row times d
        rotation = torch.where(finite[..., None, None], left @ right_t, torch.nan)
        return rotation, left, values * flip, right_t

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, left, signed, right_t = output
        ctx.mark_non_differentiable(left, signed, right_t)
        ctx.save_for_backward(left, signed, right_t)
        ctx.save_for_forward(left, signed, right_t)

    @staticmethod
    def _change(left: Tensor, signed: Tensor, right_t: Tensor, change: Tensor) -> Tensor:
        """``U (K * (X - X^T)) W^T`` for ``X = U^T change W``: the rotation's change for a change
        of ``M`` (forward mode), and equally the gradient of ``M`` for the rotation's (reverse
        mode: the map is its own adjoint)."""
        inner = left.transpose(-1, -2) @ change @ right_t.transpose(-1, -2)
        sums = signed[..., :, None] + signed[..., None, :]
        damped = sums / (sums * sums + GRADIENT_DAMPING**2)
        return left @ (damped * (inner - inner.transpose(-1, -2))) @ right_t

    @staticmethod
    def backward(ctx, grad_rotation: Tensor, *_unused: Tensor) -> Tensor:
        return _NearestRotation._change(*ctx.saved_tensors, grad_rotation)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> tuple[Tensor, None, None, None]:
        return _NearestRotation._change(*ctx.saved_tensors, tangent), None, None, None


def nearest_rotation(matrix: Tensor) -> Tensor:
    """The rotation nearest (Frobenius) to each matrix: it maximises ``trace(R^T M)``.

    SVD with the determinant fix (a proper rotation even where the orthogonal polar factor of
    ``M`` is a reflection); the derivative stays finite where singular values repeat.

    Args:
        matrix: ``(..., 3, 3)`` matrices.
    Returns:
        ``(..., 3, 3)`` rotation matrices (NaN where ``matrix`` has a non-finite entry).
    """
    _check_last_dims(matrix, (3, 3), "matrix")
    return _NearestRotation.apply(matrix)[0]


def average_rotations(matrices: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted chordal mean of rotations.

    The weighted arithmetic mean of the matrices is projected back onto SO(3): the result ``R``
    maximises ``trace(R^T M)`` for the mean ``M``, i.e. minimises ``sum_k w_k |R - R_k|_F^2``.
    This is the SVD ``M = U S V^T`` with the determinant fix ``R = U diag(1, 1, d) V^T``,
    ``d = det(U V^T)``, so the result is a rotation even where ``U V^T`` would be a reflection
    (:func:`nearest_rotation`).

    Args:
        matrices: ``(..., K, 3, 3)`` K rotations to average per batch element.
        weights: ``(..., K)`` non-negative weights, not all zero (normalised here); uniform if None.
    Returns:
        ``(..., 3, 3)`` mean rotations.
    """
    if matrices.dim() < 3 or matrices.shape[-2:] != (3, 3):
        raise ValueError(f"matrices must have shape (..., K, 3, 3), got {tuple(matrices.shape)}")
    if weights is None:
        mean = matrices.mean(dim=-3)
    else:
        weights = weights / weights.sum(dim=-1, keepdim=True)
        mean = torch.einsum("...k,...kij->...ij", weights.to(matrices.dtype), matrices)
    return nearest_rotation(mean)
