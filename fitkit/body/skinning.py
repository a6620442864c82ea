"""SMPL's linear blend skinning, evaluated only where it is needed.

The same function as ``smplx.lbs`` (shape blend shapes, joints from the shaped rest mesh, pose
blend shapes, the kinematic chain, linear blend skinning), rearranged so that a fitter pays only
for what its data terms read:

- **joints** come from the shaped rest pose through ``J_regressor``, which is linear in ``betas``:
  ``J = J_regressor v_template + (J_regressor shapedirs) betas`` with both products precomputed,
  so the joints need no vertex at all;
- **vertices** are shaped, pose-corrected and skinned only for the requested ids (``vertex_ids``):
  the keypoints term reads 24 joints and 11 vertices of ~7,000;
- the **kinematic chain** runs level by level over the tree (9 levels for SMPL's 24 joints) with
  the parents on the host, so on a GPU it never reads a device tensor to index (smplx indexes with
  its ``parents`` buffer, one host sync per joint).

Results equal smplx's to float rounding (``tests/test_skinning.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fitkit.geometry.rotations import axis_angle_to_matrix


def tree_levels(parents: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """The joints of a kinematic tree grouped by depth, root excluded: per level, the joints
    and their parents (plain lists, on the host)."""
    depth = [0] * len(parents)
    for joint, parent in enumerate(parents):
        if parent >= 0:
            depth[joint] = depth[parent] + 1
    levels = []
    for level in range(1, max(depth) + 1):
        joints = [joint for joint in range(len(parents)) if depth[joint] == level]
        levels.append((joints, [parents[joint] for joint in joints]))
    return levels


class Skinning(nn.Module):
    """The skinning arrays of one body model and the sparse forward pass over them.

    Args:
        v_template: ``(V, 3)`` rest vertices.
        shapedirs: ``(V, 3, S)`` shape blend shapes.
        posedirs: ``(P, V * 3)`` pose blend shapes (P = 9 (J - 1), smplx's layout).
        J_regressor: ``(J, V)`` joint regressor.
        weights: ``(V, J)`` skinning weights.
        parents: the parent of each joint (root -1).
    """

    def __init__(self, v_template: Tensor, shapedirs: Tensor, posedirs: Tensor,
                 J_regressor: Tensor, weights: Tensor, parents: tuple[int, ...]) -> None:
        super().__init__()
        count = v_template.shape[0]
        self.register_buffer("v_template", v_template)
        self.register_buffer("shapedirs", shapedirs)
        self.register_buffer("posedirs", posedirs.reshape(-1, count, 3))  # (P, V, 3)
        self.register_buffer("weights", weights)
        regressor = J_regressor.double()
        self.register_buffer("joint_template", (regressor @ v_template.double()).to(
            v_template.dtype))
        self.register_buffer("joint_shapedirs", torch.einsum(
            "jv,vcs->jcs", regressor, shapedirs.double()).to(v_template.dtype))
        self.parents = tuple(parents)
        self.levels = tree_levels(self.parents)
        order = [0] + [joint for joints, _ in self.levels for joint in joints]
        row = {joint: position for position, joint in enumerate(order)}
        self._level_rows = [(joints, parents, [row[parent] for parent in parents])
                            for joints, parents in self.levels]
        self._joint_rows = [row[joint] for joint in range(len(self.parents))]

    @property
    def num_vertices(self) -> int:
        """V."""
        return self.v_template.shape[0]

    def forward(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor, transl: Tensor,
                vertex_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posed joints and the posed vertices ``vertex_ids``.

        Args:
            global_orient: ``(B, 3)``; body_pose: ``(B, 3 (J - 1))`` axis-angle;
            betas: ``(B, S)``; transl: ``(B, 3)``.
            vertex_ids: ``(K,)`` long vertex ids, or ``None`` for all V.
        Returns:
            ``joints`` ``(B, J, 3)`` and ``vertices`` ``(B, K, 3)`` (``K = V`` for all).
        """
        batch = betas.shape[0]
        rotations = axis_angle_to_matrix(
            torch.cat([global_orient, body_pose], dim=-1).reshape(batch, -1, 3))  # (B, J, 3, 3)
        rest_joints = self.joint_template + torch.einsum("jcs,bs->bjc", self.joint_shapedirs,
                                                         betas)
        world_rotation, world_joint = self.chain(rotations, rest_joints)
        joints = world_joint + transl[:, None]
        if vertex_ids is not None and vertex_ids.numel() == 0:
            return joints, joints.new_zeros(batch, 0, 3)
        pick = slice(None) if vertex_ids is None else vertex_ids
        shaped = self.v_template[pick] + torch.einsum("kcs,bs->bkc", self.shapedirs[pick], betas)
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        pose_feature = (rotations[:, 1:] - eye).reshape(batch, -1)  # (B, P)
        posedirs = self.posedirs if vertex_ids is None else self.posedirs[:, vertex_ids]
        posed = shaped + (pose_feature @ posedirs.flatten(1)).view(batch, -1, 3)
        # each joint's transform maps its rest position to its posed one
        offset = world_joint - _apply(world_rotation, rest_joints)  # (B, J, 3)
        weights = self.weights[pick]  # (K, J)
        blended = torch.einsum("kj,bjx->bkx", weights, torch.cat(
            [world_rotation.flatten(-2), offset], dim=-1))  # (B, K, 12): one product for both
        rotation = blended[..., :9].unflatten(-1, (3, 3))
        vertices = _apply(rotation, posed) + blended[..., 9:]
        return joints, vertices + transl[:, None]

    def chain(self, rotations: Tensor, rest_joints: Tensor) -> tuple[Tensor, Tensor]:
        """The kinematic chain: world rotations ``(B, J, 3, 3)`` and posed joints ``(B, J, 3)``
        (no translation) from local rotations ``(B, J, 3, 3)`` and rest joints ``(B, J, 3)``
        (also used by the LM solver's closed-form Jacobian, :mod:`fitkit.fitting.lm`).

        The joints are kept in level order (root, then each level of the tree), so each level
        finds its parents with one index into what the levels above have made: a few tensor
        operations per level, none per joint.
        """
        rotation, joint = rotations[:, :1], rest_joints[:, :1]  # level order
        for joints, parents, parent_rows in self._level_rows:
            parent_rotation, parent_joint = rotation[:, parent_rows], joint[:, parent_rows]
            bone = rest_joints[:, joints] - rest_joints[:, parents]  # (B, L, 3)
            level_rotation = (parent_rotation[..., :, :, None]
                              * rotations[:, joints, None]).sum(-2)
            rotation = torch.cat([rotation, level_rotation], dim=1)
            joint = torch.cat([joint, parent_joint + _apply(parent_rotation, bone)], dim=1)
        return rotation[:, self._joint_rows], joint[:, self._joint_rows]


def _apply(rotation: Tensor, points: Tensor) -> Tensor:
    """``rotation @ point`` for ``(..., 3, 3)`` and ``(..., 3)``, as three column products: on
    the CPU many tiny matrix products run several times faster so than as batched matmuls, and
    no ``(..., 3, 3)`` intermediate is made."""
    return (rotation[..., :, 0] * points[..., 0, None] + rotation[..., :, 1] * points[..., 1, None]
            + rotation[..., :, 2] * points[..., 2, None])


def skinning_from_arrays(v_template: np.ndarray, shapedirs: np.ndarray, posedirs: np.ndarray,
                         J_regressor: np.ndarray, weights: np.ndarray, parents: tuple[int, ...],
                         dtype: torch.dtype) -> Skinning:
    """A :class:`Skinning` from a body file's arrays (``posedirs`` ``(V, 3, P)`` as stored)."""
    count = v_template.shape[0]
    flat = np.ascontiguousarray(posedirs.reshape(count * 3, -1).T)  # (P, V * 3), smplx's layout
    return Skinning(*(torch.as_tensor(np.asarray(array), dtype=dtype) for array in (
        v_template, shapedirs, flat, J_regressor, weights)), parents)
